// Weir console: a playground for background jobs (live events over fetch-based SSE) and a usage dashboard.
// The API key lives in sessionStorage and is sent as a Bearer token; EventSource cannot send headers, so the
// event stream is read with fetch + ReadableStream and resumed with Last-Event-ID after a dropped connection.
"use strict";

const $ = (id) => document.getElementById(id);
const FINAL = new Set(["done", "failed", "cancelled", "dead_letter"]);
let current = null; // {id, lastEventId, finished}

function apiKey() { return sessionStorage.getItem("weir.key") || ""; }
function headers(extra = {}) { return { Authorization: `Bearer ${apiKey()}`, ...extra }; }

function showKeyState() {
  const k = apiKey();
  $("key-state").textContent = k ? `key …${k.slice(-4)}` : "no key";
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("weir.key", $("api-key").value.trim());
  $("api-key").value = "";
  showKeyState();
  refreshDashboard();
});

function logEvent(type, data) {
  const li = document.createElement("li");
  li.dataset.type = type;
  const detail = { ...data };
  delete detail.type;
  if (type === "delta" || type === "reasoning") li.textContent = `${type} ${JSON.stringify(detail.text)}`;
  else li.textContent = `${type} ${JSON.stringify(detail)}`;
  $("events").appendChild(li);
  $("events").scrollTop = $("events").scrollHeight;
}

function notifyFinished(status, text) {
  if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
  new Notification(`Weir job ${status}`, { body: (text || "").slice(0, 120), tag: current ? current.id : "weir" });
}

function onEvent(type, data) {
  logEvent(type, data);
  const answer = $("answer");
  if (type === "started" && data.attempt > 1) { answer.textContent = ""; }
  if (type === "preview") { answer.textContent = data.content; answer.classList.add("provisional"); }
  if (type === "delta") {
    if (answer.classList.contains("provisional")) { answer.textContent = ""; answer.classList.remove("provisional"); }
    answer.textContent += data.text;
  }
  if (type === "reasoning") $("reasoning-note").textContent = "the model is reasoning…";
  if (type === "started" || type === "queued") $("job-status").textContent = type === "queued" ? "queued" : "running";
  if (FINAL.has(type)) {
    current.finished = true;
    answer.classList.remove("provisional");
    const status = { done: "succeeded" }[type] || type;
    $("job-status").textContent = status;
    $("cancel").disabled = true;
    if (type === "done") answer.textContent = data.result.content;
    notifyFinished(status, type === "done" ? data.result.content : JSON.stringify(data.error || data));
  }
}

// Reads the job's event stream, reconnecting with Last-Event-ID until the final event arrives.
async function follow(job) {
  let failures = 0;
  while (!job.finished && failures < 20) {
    try {
      const h = headers(job.lastEventId ? { "Last-Event-ID": job.lastEventId } : {});
      const resp = await fetch(`/v1/jobs/${job.id}/events`, { headers: h });
      if (!resp.ok) throw new Error(`events: HTTP ${resp.status}`);
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let id = "", type = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("id: ")) id = line.slice(4);
            else if (line.startsWith("event: ")) type = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (!data) continue; // keep-alive comment
          if (id) job.lastEventId = id;
          failures = 0;
          onEvent(type, JSON.parse(data));
        }
      }
    } catch (err) {
      failures += 1;
      logEvent("reconnect", { error: String(err), after: job.lastEventId });
    }
    if (!job.finished) await new Promise((r) => setTimeout(r, 500));
  }
}

$("job-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if ("Notification" in window && Notification.permission === "default") Notification.requestPermission();
  $("events").innerHTML = "";
  $("answer").textContent = "";
  $("answer").classList.remove("provisional");
  $("reasoning-note").textContent = "";
  const body = {
    model: $("model").value, max_tokens: Number($("max-tokens").value) || 64,
    temperature: Number($("temperature").value) || 0,
    messages: [{ role: "user", content: $("prompt").value }], metadata: { source: "console" },
    preview: $("preview").checked,
  };
  const resp = await fetch("/v1/jobs", { method: "POST", headers: headers({ "Content-Type": "application/json" }),
                                         body: JSON.stringify(body) });
  const doc = await resp.json();
  if (resp.status !== 202) { $("job-status").textContent = `error: ${doc.error ? doc.error.message : resp.status}`; return; }
  current = { id: doc.id, lastEventId: "", finished: false };
  $("job-id").textContent = doc.id;
  $("job-status").textContent = "queued";
  $("cancel").disabled = false;
  follow(current).then(refreshDashboard);
});

$("cancel").addEventListener("click", async () => {
  if (current) await fetch(`/v1/jobs/${current.id}`, { method: "DELETE", headers: headers() });
});

function tile(label, value) {
  const div = document.createElement("div");
  div.className = "tile";
  div.innerHTML = `<span></span><b></b>`;
  div.querySelector("span").textContent = label;
  div.querySelector("b").textContent = value;
  return div;
}

// Prometheus text: mean seconds per hop from weir_gateway_hop_seconds_sum / _count.
function hopMeans(text) {
  const sums = {}, counts = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^weir_gateway_hop_seconds_(sum|count)\{hop="([^"]+)"\} ([0-9.eE+-]+)/);
    if (!m) continue;
    (m[1] === "sum" ? sums : counts)[m[2]] = Number(m[3]);
  }
  return Object.keys(counts).map((hop) => ({ hop, count: counts[hop], ms: counts[hop] ? 1000 * sums[hop] / counts[hop] : 0 }));
}

async function refreshDashboard() {
  $("dash-error").textContent = "";
  if (!apiKey()) return;
  try {
    const usage = await fetch("/v1/usage?group_by=team", { headers: headers() });
    const doc = await usage.json();
    if (!usage.ok) throw new Error(doc.error ? doc.error.message : `HTTP ${usage.status}`);
    const t = doc.total;
    const hits = t.hits_exact + t.hits_semantic;
    const tiles = $("tiles");
    tiles.innerHTML = "";
    tiles.append(tile("requests", t.requests),
                 tile("cache hit rate", t.requests ? `${(100 * hits / t.requests).toFixed(1)} %` : "–"),
                 tile("tokens saved", t.saved_tokens), tile("dollars saved", `$${t.saved_usd.toFixed(6)}`),
                 tile("spend", `$${t.cost_usd.toFixed(6)}`));
    const rows = $("teams").querySelector("tbody");
    rows.innerHTML = "";
    for (const r of doc.data) {
      const tr = document.createElement("tr");
      for (const v of [r.team || "(own key)", r.requests, r.prompt_tokens + r.completion_tokens,
                       r.cost_usd.toFixed(6), r.saved_usd.toFixed(6)]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      rows.appendChild(tr);
    }
    const metrics = await (await fetch("/metrics")).text();
    const jobs = await (await fetch("/v1/jobs/stats", { headers: headers() })).json();
    const hops = $("hops").querySelector("tbody");
    hops.innerHTML = "";
    const rowsOf = [...hopMeans(metrics).map((h) => [h.hop, "requests (this gateway)", h.count, h.ms]),
                    ...(jobs.hops || []).map((h) => [h.hop, "jobs (all workers)", h.count, h.mean_ms])];
    $("queue").textContent = jobs.queue ? `queue: ${jobs.queue.waiting} waiting, ${jobs.queue.running} running` : "";
    for (const [hop, source, count, ms] of rowsOf) {
      const tr = document.createElement("tr");
      for (const v of [hop, source, count, ms.toFixed(2)]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      hops.appendChild(tr);
    }
  } catch (err) {
    $("dash-error").textContent = `dashboard: ${err.message}`;
  }
}

$("refresh").addEventListener("click", refreshDashboard);
showKeyState();
refreshDashboard();
