"use strict";
// The web page: start a job, follow it live (SSE, polling when the stream fails), cancel, retry,
// and list your downloads. The open job's id lives in the URL (?job=…) so a reload resumes it.
const $ = (id) => document.getElementById(id);
const TERMINAL = ["completed", "failed", "cancelled"];
const POLL_MS = 1500;
const FILES_REFRESH_MS = 3000;
const PLAIN = {
  400: "The request was not accepted", 401: "The service needs a valid access token",
  404: "That job was not found", 409: "That is not possible in the job's current state",
  410: "The archive has expired", 413: "The request is too large",
  429: "Too many requests: wait a moment and try again",
  503: "The service is unavailable for a moment: try again shortly",
};
// `follow` counts up whenever what we follow changes, so late answers for an old view are dropped.
const state = { info: null, job: null, follow: 0, source: null, timer: null, filesAt: 0, filesDone: -1, nextPage: null };

// --- the API ---
class ApiError extends Error {
  constructor(status, body) {
    const why = PLAIN[status] || `The request failed (HTTP ${status})`;
    super(body.message ? `${why}: ${body.message}.` : `${why}.`);
    this.status = status;
    this.requestId = body.requestId;
  }
}

const token = () => sessionStorage.getItem("token") || "";
const statusPath = (id) => `/v1/download/status/${encodeURIComponent(id)}`;

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body) headers["Content-Type"] = "application/json";
  if (token()) headers.Authorization = `Bearer ${token()}`;
  // no-store: `/` answers HTML or JSON by Accept, so a cached page must never stand in for JSON.
  const init = { method, headers, cache: "no-store" };
  let resp;
  try {
    resp = await fetch(path, body ? { ...init, body: JSON.stringify(body) } : init);
  } catch {
    throw new Error("The service cannot be reached: check your connection and try again.");
  }
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function showError(err) {
  const ref = err && err.requestId ? ` (reference ${err.requestId})` : "";
  $("message").textContent = err ? err.message + ref : "";
  $("message").hidden = !err;
}

// --- formatting ---
function bytes(n) {
  if (n == null) return "";
  let i = 0;
  for (; n >= 1024 && i < 4; i += 1) n /= 1024;
  return `${i ? n.toFixed(1) : n} ${["B", "KB", "MB", "GB", "TB"][i]}`;
}

function fromNow(iso) {
  const s = Math.max(0, Math.round((new Date(iso) - Date.now()) / 1000));
  return s < 90 ? `${s} s` : `${Math.round(s / 60)} min`;
}

function setTime(el, iso, text) {
  el.dateTime = iso;
  el.textContent = text || new Date(iso).toLocaleString();
}

function link(href, text, label) {
  const a = Object.assign(document.createElement("a"), { href, textContent: text });
  a.setAttribute("aria-label", label);
  return a;
}

// --- the job view ---
function render(job) {
  state.job = job;
  const finished = TERMINAL.includes(job.status);
  $("job").hidden = false;
  $("job-id").textContent = job.jobId;
  $("job-status").textContent = $("job-status").dataset.status = job.status;
  $("bar").value = job.progress ?? 0;
  $("percent").textContent = `${job.progress ?? 0}%`;
  renderDetail(job, finished);
  renderArchive(job);
  $("error").textContent = job.error || "";
  $("cancel").hidden = finished;
  $("retry").hidden = !["failed", "cancelled"].includes(job.status);
  if (job.files) renderFiles(job.files);
  const ui = state.info.temporalUiUrl;
  $("temporal-link").hidden = !ui;
  if (ui) $("temporal-link").href = `${ui}/namespaces/default/workflows/${encodeURIComponent(job.jobId)}`;
  if (finished) $("mode").textContent = "";
  const row = $("jobs").querySelector(`[data-job="${CSS.escape(job.jobId)}"] strong`);
  if (row) row.textContent = row.dataset.status = job.status;
}

function renderDetail(job, finished) {
  const failed = job.failedFiles ? `, ${job.failedFiles} failed` : "";
  const size = job.totalBytes ? `; ${bytes(job.bytesProcessed)} of ${bytes(job.totalBytes)}` : "";
  $("detail").textContent = `${job.completedFiles ?? 0} of ${job.totalFiles} files done${failed}${size}`;
  const eta = job.estimatedCompletionAt;
  $("eta").hidden = finished || !eta;
  if (eta && !finished) setTime($("eta-time"), eta, `${fromNow(eta)} (${new Date(eta).toLocaleTimeString()})`);
}

function renderArchive(job) {
  const ready = job.status === "completed" && Boolean(job.downloadUrl);
  $("archive").hidden = $("link").hidden = !ready;
  if (!ready) return;
  $("link").href = job.downloadUrl;
  $("archive-size").value = job.archiveSize ?? "";
  $("archive-size").textContent = bytes(job.archiveSize) || "size unknown";
  if (job.expiresAt) setTime($("expires"), job.expiresAt);
}

function renderFiles(files) {
  $("files").replaceChildren(...files.map((f) => {
    const li = document.createElement("li");
    li.dataset.status = f.status;
    const why = f.error ? ` (${f.error})` : "";
    const size = f.size != null ? `, ${bytes(f.size)}` : "";
    li.textContent = `${f.file_id}: ${f.status}${why}${size} `;
    if (f.downloadUrl) li.append(link(f.downloadUrl, "download", `Download file ${f.file_id}`));
    return li;
  }));
}

// --- following a job ---
function stopFollowing() {
  state.follow += 1;
  if (state.source) state.source.close();
  clearTimeout(state.timer);
  state.source = state.timer = null;
  return state.follow;
}

// EventSource cannot send headers: with auth on, it carries a short-lived ticket for this one
// job (asked for with the token in a header), never the token itself.
async function streamQuery(id) {
  if (!state.info.authRequired) return "";
  const { ticket } = await api("POST", `/v1/download/${encodeURIComponent(id)}/ticket`);
  return `?ticket=${encodeURIComponent(ticket)}`;
}

async function follow(id) {
  if (state.info.authRequired && !token()) return poll(id);
  const generation = stopFollowing();
  let query;
  try {
    query = await streamQuery(id);
  } catch {
    if (generation === state.follow) poll(id);
    return;
  }
  if (generation !== state.follow) return;
  const source = new EventSource(`/v1/download/subscribe/${encodeURIComponent(id)}${query}`);
  state.source = source;
  $("mode").textContent = "(live)";
  source.addEventListener("progress", (e) => onProgress(generation, JSON.parse(e.data)));
  for (const name of TERMINAL) {
    source.addEventListener(name, (e) => {
      stopFollowing();
      render(JSON.parse(e.data));
      loadJobs();
    });
  }
  source.addEventListener("error", () => {
    if (generation === state.follow) poll(id);
  });
}

function onProgress(generation, progress) {
  if (generation !== state.follow) return;
  render({ ...state.job, ...progress });
  // Progress events carry no files[]: ask for them when a file finishes, and now and then.
  const filesDone = progress.completedFiles + progress.failedFiles;
  if (filesDone !== state.filesDone || Date.now() - state.filesAt > FILES_REFRESH_MS) {
    state.filesDone = filesDone;
    state.filesAt = Date.now();
    api("GET", statusPath(progress.jobId)).then((job) => {
      if (generation === state.follow && !TERMINAL.includes(state.job.status)) render(job);
    }, () => {}); // the stream keeps the view current; the next refresh tries again
  }
}

function poll(id) {
  const generation = stopFollowing();
  $("mode").textContent = "(checking every few seconds)";
  let failing = false;
  const tick = async () => {
    try {
      const job = await api("GET", statusPath(id));
      if (generation !== state.follow) return;
      if (failing) showError(null);
      failing = false;
      render(job);
      if (TERMINAL.includes(job.status)) return loadJobs();
    } catch (err) {
      if (generation !== state.follow) return;
      failing = true;
      showError(err);
      if ([401, 404].includes(err.status)) return;
    }
    state.timer = setTimeout(tick, POLL_MS);
  };
  tick();
}

async function openJob(id, push) {
  const url = new URL(location.href);
  url.searchParams.set("job", id);
  history[push ? "pushState" : "replaceState"]({ job: id }, "", url);
  const generation = stopFollowing();
  showError(null);
  state.filesDone = -1;
  try {
    const job = await api("GET", statusPath(id));
    if (generation !== state.follow) return;
    render(job);
    if (!TERMINAL.includes(job.status)) follow(id);
  } catch (err) {
    $("job").hidden = true;
    showError(err);
  }
}

function jobFromUrl() {
  const id = new URLSearchParams(location.search).get("job");
  if (id) return openJob(id, false);
  stopFollowing();
  state.job = null;
  $("job").hidden = true;
}

// --- actions ---
async function startJob(event) {
  event.preventDefault();
  showError(null);
  const words = $("ids").value.split(/[\s,]+/).filter(Boolean);
  const bad = words.find((w) => !/^\d+$/.test(w));
  if (bad !== undefined) throw new Error(`"${bad}" is not a file id: use whole numbers.`);
  const job = await api("POST", "/v1/download/initiate", { file_ids: words.map(Number) });
  await openJob(job.jobId, true);
  loadJobs();
}

async function act(method, suffix) {
  const id = state.job.jobId;
  showError(null);
  await api(method, `/v1/download/${encodeURIComponent(id)}${suffix}`);
  await openJob(id, false);
}

// --- your downloads ---
async function loadJobs(more = false) {
  if (state.info.authRequired && !token()) {
    $("jobs").replaceChildren();
    $("jobs-empty").textContent = "Enter your access token to see your downloads.";
    $("jobs-empty").hidden = false;
    $("more").hidden = true;
    return;
  }
  const params = new URLSearchParams({ pageSize: "10" });
  if ($("filter").value) params.set("status", $("filter").value);
  if (more && state.nextPage) params.set("pageToken", state.nextPage);
  try {
    const page = await api("GET", `/v1/downloads?${params}`);
    const items = page.jobs.map(jobItem);
    if (more) $("jobs").append(...items); else $("jobs").replaceChildren(...items);
    state.nextPage = page.nextPageToken || null;
    $("more").hidden = !state.nextPage;
    $("jobs-empty").textContent = "No downloads yet.";
    $("jobs-empty").hidden = $("jobs").children.length > 0;
  } catch (err) {
    showError(err);
  }
}

function jobItem(job) {
  const li = document.createElement("li");
  li.dataset.job = job.jobId;
  const a = link(`?job=${encodeURIComponent(job.jobId)}`, job.jobId, `Open job ${job.jobId}`);
  a.addEventListener("click", (e) => { e.preventDefault(); openJob(job.jobId, true); });
  const status = document.createElement("strong");
  status.textContent = status.dataset.status = job.status;
  const files = `${job.totalFiles} file${job.totalFiles === 1 ? "" : "s"}`;
  const when = Object.assign(document.createElement("span"), { className: "muted",
    textContent: ` · ${files} · ${new Date(job.createdAt).toLocaleString()}${job.error ? ` · ${job.error}` : ""}` });
  li.append(a, " ", status, when);
  return li;
}

// --- the access token (kept for this tab only) ---
function setToken(value) {
  if (value) sessionStorage.setItem("token", value); else sessionStorage.removeItem("token");
  $("token").value = value;
  $("auth-state").textContent = value ? "A token is set for this tab." : "No token set.";
}

function tokenChanged(value) {
  setToken(value);
  showError(null);
  loadJobs();
  if (state.job) openJob(state.job.jobId, false);
}

// --- start ---
// A user's action (an async handler): whatever goes wrong is said on the page.
const on = (id, type, handler) =>
  $(id).addEventListener(type, (e) => handler(e).catch(showError));

async function init() {
  on("start", "submit", startJob);
  on("cancel", "click", () => act("DELETE", ""));
  on("retry", "click", () => act("POST", "/retry"));
  on("auth", "submit", async (e) => { e.preventDefault(); tokenChanged($("token").value.trim()); });
  on("forget", "click", async () => tokenChanged(""));
  on("refresh", "click", () => loadJobs());
  on("filter", "change", () => loadJobs());
  on("more", "click", () => loadJobs(true));
  window.addEventListener("popstate", jobFromUrl);
  try {
    state.info = await api("GET", "/");
  } catch (err) {
    state.info = { authRequired: false, temporalUiUrl: "" };
    showError(err);
  }
  $("auth").hidden = !state.info.authRequired;
  setToken(token());
  jobFromUrl();
  loadJobs();
}

init();
