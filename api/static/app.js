"use strict";
// Starts a job, follows it over Server-Sent Events, offers cancel, retry and the archive link.
const $ = (id) => document.getElementById(id);
let source = null;
let jobId = null;

async function api(method, path, body) {
  const resp = await fetch(path, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(data.message || resp.statusText);
  return data;
}

function show(job) {
  $("job").hidden = false;
  $("job-id").textContent = job.jobId;
  $("job-status").textContent = job.status;
  $("bar").value = job.progress ?? 0;
  const mb = (n) => (n / 1048576).toFixed(1) + " MB";
  $("detail").textContent =
    `${job.completedFiles}/${job.totalFiles} files, ${mb(job.bytesProcessed)} of ${mb(job.totalBytes)}` +
    (job.estimatedCompletionAt ? `, done about ${new Date(job.estimatedCompletionAt).toLocaleTimeString()}` : "");
  $("error").textContent = job.error || "";
  const finished = ["completed", "failed", "cancelled"].includes(job.status);
  $("cancel").hidden = finished;
  $("retry").hidden = !(job.status === "failed" || job.status === "cancelled");
  $("link").hidden = !job.downloadUrl;
  if (job.downloadUrl) $("link").href = job.downloadUrl;
  if (job.files) {
    $("files").replaceChildren(...job.files.map((f) => {
      const li = document.createElement("li");
      li.textContent = `${f.fileId}: ${f.status}${f.error ? " (" + f.error + ")" : ""}`;
      return li;
    }));
  }
}

function follow(id) {
  if (source) source.close();
  jobId = id;
  source = new EventSource(`/v1/download/subscribe/${encodeURIComponent(id)}`);
  source.addEventListener("progress", (e) => show(JSON.parse(e.data)));
  for (const name of ["completed", "failed", "cancelled"]) {
    source.addEventListener(name, (e) => { show(JSON.parse(e.data)); source.close(); });
  }
}

$("start").addEventListener("submit", async (event) => {
  event.preventDefault();
  const ids = $("ids").value.split(/[\s,]+/).filter(Boolean).map(Number);
  try {
    const job = await api("POST", "/v1/download/initiate", { file_ids: ids });
    show({ ...job, progress: 0, completedFiles: 0, bytesProcessed: 0, totalBytes: 0 });
    follow(job.jobId);
  } catch (err) {
    $("job").hidden = false;
    $("error").textContent = err.message;
  }
});

$("cancel").addEventListener("click", async () => {
  try { await api("DELETE", `/v1/download/${encodeURIComponent(jobId)}`); }
  catch (err) { $("error").textContent = err.message; }
});

$("retry").addEventListener("click", async () => {
  try { await api("POST", `/v1/download/${encodeURIComponent(jobId)}/retry`); follow(jobId); }
  catch (err) { $("error").textContent = err.message; }
});
