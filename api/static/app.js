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
// Refusals that need their own words: the API's message then says what the limit is.
const PLAIN_ERRORS = {
  quota_exceeded: "Your quota is used up for now",
  priority_not_allowed: "That priority is not allowed for you",
};
const MIB = 1024 * 1024;
// `follow` counts up whenever what we follow changes, so late answers for an old view are dropped.
const state = { info: null, job: null, follow: 0, source: null, timer: null, filesAt: 0, filesDone: -1, nextPage: null };

// --- the API ---
class ApiError extends Error {
  constructor(status, body) {
    const why = PLAIN_ERRORS[body.error] || PLAIN[status] || `The request failed (HTTP ${status})`;
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
// Sizes in binary units, as the service counts them (1 KiB = 1024 bytes).
function bytes(n) {
  if (n == null) return "";
  let i = 0;
  for (; n >= 1024 && i < 4; i += 1) n /= 1024;
  return `${i ? n.toFixed(1) : n} ${["B", "KiB", "MiB", "GiB", "TiB"][i]}`;
}

function fromNow(iso) {
  const s = Math.max(0, Math.round((new Date(iso) - Date.now()) / 1000));
  return s < 90 ? `${s} s` : `${Math.round(s / 60)} min`;
}

// "5 minutes ago", in the browser's language.
const RELATIVE = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
function ago(iso) {
  const s = Math.round((new Date(iso) - Date.now()) / 1000);
  const steps = [[60, "second"], [3600, "minute", 60], [86400, "hour", 3600], [Infinity, "day", 86400]];
  const [, unit, per = 1] = steps.find(([limit]) => Math.abs(s) < limit);
  return RELATIVE.format(Math.round(s / per), unit);
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function setTime(el, iso, text) {
  el.dateTime = iso;
  el.textContent = text || new Date(iso).toLocaleString();
}

function link(href, text, label) {
  const a = Object.assign(document.createElement("a"), { href, textContent: text });
  a.setAttribute("aria-label", label);
  return a;
}

function element(tag, props, ...children) {
  const el = Object.assign(document.createElement(tag), props);
  el.append(...children);
  return el;
}

// A time in words ("5 minutes ago"), the exact local time on hover.
function relativeTime(iso) {
  const el = element("time", { dateTime: iso, textContent: ago(iso) });
  el.title = new Date(iso).toLocaleString();
  return el;
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard API (a page over plain HTTP on another host): copy from a selected field.
    const field = element("textarea", { value: text, readOnly: true });
    document.body.append(field);
    field.select();
    const copied = document.execCommand("copy");
    field.remove();
    if (!copied) throw new Error("The link could not be copied: open it and copy it from the address bar.");
  }
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
  $("priority").hidden = job.priority == null;
  $("priority").textContent = job.priority == null ? "" : `· priority ${job.priority}`;
  renderDetail(job, finished);
  renderArchive(job);
  $("error").textContent = job.error || "";
  $("cancel").hidden = finished;
  $("retry").hidden = !["failed", "cancelled"].includes(job.status);
  if (job.files) renderFiles(job);
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
  const eta = etaShown(job, finished);
  $("eta").hidden = eta !== "time";
  $("estimating").hidden = eta !== "estimating";
  if (eta === "time") {
    const at = job.estimatedCompletionAt;
    setTime($("eta-time"), at, `${fromNow(at)} (${new Date(at).toLocaleTimeString()})`);
  }
}

// "time", "estimating" or "none". The API says when its figure is a guess (etaBasis
// "estimating"); a server that does not say (no etaBasis at all) is not trusted before 10 % of
// the job is done, when its figure comes from too little to mean anything.
function etaShown(job, finished) {
  if (finished) return "none";
  const early = job.etaBasis === undefined && (job.progress ?? 0) < 10;
  if (job.etaBasis === "estimating" || early || !job.estimatedCompletionAt) return "estimating";
  return "time";
}

// Every part of the archive (one for most jobs), each with its size and a copy-link button.
function renderArchive(job) {
  const urls = job.downloadUrls?.length ? job.downloadUrls : [job.downloadUrl].filter(Boolean);
  const sizes = job.archiveSizes?.length === urls.length ? job.archiveSizes : [job.archiveSize];
  const ready = job.status === "completed" && urls.length > 0;
  $("archives").hidden = !ready;
  if (!ready) return;
  const many = urls.length > 1;
  $("archives-title").textContent = many ? `Archive in ${urls.length} parts` : "Archive";
  $("parts").replaceChildren(...urls.map((url, i) => {
    const name = many ? `Download part ${i + 1} of ${urls.length}` : "Download the archive";
    const a = element("a", { href: url, className: "button", textContent: name });
    const size = element("data", { value: sizes[i] ?? "", textContent: bytes(sizes[i]) || "size unknown" });
    const what = many ? `the link of part ${i + 1}` : "the archive link";
    const copy = element("button", { type: "button", textContent: "Copy link" });
    copy.setAttribute("aria-label", `Copy ${what}`);
    const said = element("span", { className: "muted" });
    said.setAttribute("role", "status");
    copy.addEventListener("click", () => copyText(url).then(
      () => { said.textContent = "Copied"; },
      (err) => showError(err),
    ));
    return element("li", {}, a, " ", size, " ", copy, " ", said);
  }));
  if (job.expiresAt) setTime($("expires"), job.expiresAt);
}

function renderFiles(job) {
  const missing = [];
  $("files").replaceChildren(...job.files.map((f) => {
    const li = document.createElement("li");
    li.dataset.status = f.status;
    const why = f.error ? ` (${f.error})` : "";
    if (f.status === "failed") missing.push(`${f.file_id}${why}`);
    const working = f.status === "processing" && f.file_id === job.currentFile && job.currentFileSize != null;
    let size = f.size != null ? `, ${bytes(f.size)}` : "";
    if (working) size = `, ${bytes(job.currentFileBytes ?? 0)} of ${bytes(job.currentFileSize)}`;
    li.textContent = `${f.file_id}: ${f.status}${why}${size} `;
    if (working) {
      const bar = element("progress", { max: job.currentFileSize || 1, value: job.currentFileBytes ?? 0 });
      bar.setAttribute("aria-label", `File ${f.file_id} progress`);
      li.append(bar);
    }
    if (f.downloadUrl) li.append(link(f.downloadUrl, "download", `Download file ${f.file_id}`));
    if (f.sha256) li.title = `SHA-256 ${f.sha256}`;
    return li;
  }));
  $("missing").hidden = missing.length === 0;
  $("missing").textContent = `Not in the archive: ${missing.join(", ")}`;
}

// Files whose state changed (a progress event's changedFiles) replace their entries.
function mergeFiles(files, changed) {
  const byId = new Map(changed.map((f) => [f.file_id, f]));
  const merged = (files || []).map((f) => byId.get(f.file_id) || f);
  const known = new Set(merged.map((f) => f.file_id));
  return merged.concat(changed.filter((f) => !known.has(f.file_id)));
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
  const { changedFiles, ...figures } = progress;
  if (Array.isArray(changedFiles)) {
    // The event says which files changed (the stream's first event: all of them).
    render({ ...state.job, ...figures, files: mergeFiles(state.job.files, changedFiles) });
    return;
  }
  render({ ...state.job, ...figures });
  // A server whose events carry no files: ask for them when a file finishes, and now and then.
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
  const request = { file_ids: words.map(Number) };
  // Unset: the service's default priority, and one archive.
  if ($("job-priority").value) request.priority = Number($("job-priority").value);
  const split = $("split").value.trim();
  if (split || $("split").validity.badInput) {
    if (!/^\d+$/.test(split) || Number(split) < 1) {
      throw new Error("The part size is a whole number of MiB, 1 or more.");
    }
    request.max_archive_bytes = Number(split) * MIB;
  }
  const job = await api("POST", "/v1/download/initiate", request);
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

// A job in the list: its id and state, then what tells it apart: its file ids and count, how far
// it got, its size, when it was created (in words), its priority.
function jobItem(job) {
  const li = document.createElement("li");
  li.dataset.job = job.jobId;
  const a = link(`?job=${encodeURIComponent(job.jobId)}`, job.jobId, `Open job ${job.jobId}`);
  a.addEventListener("click", (e) => { e.preventDefault(); openJob(job.jobId, true); });
  const status = document.createElement("strong");
  status.textContent = status.dataset.status = job.status;
  const ids = job.firstFileIds?.length ? `: ${job.firstFileIds.join(", ")}` : "";
  const more = ids && job.totalFiles > job.firstFileIds.length ? ", …" : "";
  const facts = [`${plural(job.totalFiles, "file")}${ids}${more}`];
  if (job.completedFiles != null) facts.push(`${job.completedFiles} done`);
  if (job.failedFiles) facts.push(`${job.failedFiles} failed`);
  if (job.status === "processing" && job.progress != null) facts.push(`${job.progress}%`);
  if (job.totalBytes) facts.push(bytes(job.totalBytes));
  if (job.priority != null) facts.push(`priority ${job.priority}`);
  const about = element("span", { className: "muted about" }, facts.join(" · "), " · created ",
    relativeTime(job.createdAt), job.error ? ` · ${job.error}` : "");
  li.append(a, " ", status, about);
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
