// lorastream's page: refreshes from /api/status every few seconds and streams
// chat answers from /v1/chat/completions. Every value is written with
// textContent, never parsed as HTML: crawled text stays text.
"use strict";

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 3000;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  return tr;
}

function num(v) {
  const td = el("td", v, "num");
  return td;
}

function fill(tableId, rows) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...rows);
}

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 120) return s + "s ago";
  if (s < 7200) return Math.round(s / 60) + "m ago";
  if (s < 172800) return Math.round(s / 3600) + "h ago";
  return Math.round(s / 86400) + "d ago";
}

function key() {
  return $("chat-key").value || localStorage.getItem("lorastream-key") || "";
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const k = key();
  if (k) h["Authorization"] = "Bearer " + k;
  return h;
}

function render(data) {
  const st = data.status;
  $("model").textContent = "model " + data.model.source;
  $("served").replaceChildren(
    st.served_adapter ? el("span", "serving v" + st.served_adapter, "badge ok")
                      : el("span", "serving the base model", "badge"));
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();

  fill("stages", st.stages.map((s) => row([
    el("td", s.name), el("td", s.state, s.state === "running" ? "running" : ""),
    el("td", s.last_error ? s.detail + " — " + s.last_error : s.detail),
    num(s.runs), num(s.failures)])));

  // Poison items: tried max_item_failures times, then set aside (status too).
  fill("failures", (st.item_failures || []).map((f) => {
    const state = el("td");
    state.appendChild(el("span", f.set_aside ? "set aside" : "retrying",
      "badge " + (f.set_aside ? "bad" : "warn")));
    return row([el("td", f.kind + " " + f.key), num(f.failures), state, el("td", f.last_error)]);
  }));
  const d = st.disk;
  if (d) {
    const mb = (n) => n >= 1e9 ? (n / 1e9).toFixed(1) + " GB" : (n / 1e6).toFixed(1) + " MB";
    const used = d.parts.reduce((a, p) => a + p[1], 0);
    $("disk").textContent = "state dir " + mb(used) + " (" +
      d.parts.map((p) => p[0] + " " + mb(p[1])).join(", ") + "); " + mb(d.free_bytes) +
      " free" + (d.low ? " — LOW, under [retention] min_free_bytes" : "");
    $("disk").className = d.low ? "bad" : "dim";
  }

  fill("sources", st.sources.map((s) => {
    const r = s.store || {};
    let status;
    if (!s.enabled) status = el("span", "disabled", "badge");
    else if (r.degraded) status = el("span", "DEGRADED", "badge bad");
    else if (r.last_error) status = el("span", "failing", "badge warn");
    else status = el("span", r.last_run_at ? "ok" : "waiting", "badge ok");
    const td = el("td"); td.appendChild(status);
    if (r.last_error) td.appendChild(el("div", r.last_error, "dim"));
    return row([el("td", s.name), el("td", s.kind), el("td", ago(r.last_run_at)),
      num(r.items_total ?? 0), num(r.error_count ?? 0), td]);
  }));

  fill("streams", st.streams.map((s) => row([num(s.id), el("td", s.name), num(s.n_train),
    num(s.n_eval), el("td", s.state)])));
  // Before the first stream: how to feed the daemon.
  const feed = $("feed");
  feed.replaceChildren();
  if (st.streams.length === 0) {
    feed.appendChild(el("p", st.sources.length === 0
      ? "No stream yet, and no [[sources]] in the config: add one (a spool directory to drop " +
        "CSV/JSON/JSONL exports into, a Hugging Face dataset, or Quora through Crawlbase) and reload."
      : "No stream yet. Feed it:"));
    for (const s of st.sources.filter((x) => x.enabled)) {
      feed.appendChild(el("div", s.name + " (" + s.kind + "): " + s.feeds +
        (s.schedule ? ", read on " + s.schedule : ""), "dim"));
    }
  }

  fill("versions", st.adapters.slice().reverse().map((a) => {
    const d = a.decision || {};
    const reasons = (d.reasons || []).join("; ") || d.error || "";
    const cls = a.state === "promoted" ? "ok"
      : ["rejected", "not_learned", "rolled_back", "failed"].includes(a.state) ? "bad" : "running";
    const state = el("td"); state.appendChild(el("span", a.state, "badge " + cls));
    if (a.id === st.served_adapter) state.appendChild(el("span", " served", "ok"));
    return row([el("td", "v" + a.id + (a.attempt > 1 ? " (attempt " + a.attempt + ")" : "")),
      num(a.stream_id), state, el("td", reasons)]);
  }));

  // Where each promoted version went: ok, or degraded with the last error.
  fill("publish", (st.publish || []).map((t) => {
    const r = t.store;
    const td = el("td");
    td.appendChild(!r ? el("span", "not run yet", "badge")
      : r.ok ? el("span", "ok", "badge ok") : el("span", "DEGRADED", "badge bad"));
    if (r && !r.ok && r.last_error) td.appendChild(el("div", r.failures + " failed: " + r.last_error, "dim"));
    return row([el("td", t.name), el("td", t.kind), el("td", t.to),
      el("td", r ? r.published.map((v) => "v" + v).join(", ") : ""),
      el("td", r ? (r.version ? "v" + r.version : "base") : ""), td]);
  }));

  renderMatrix(data.matrix);
  renderLoss(st.adapters);
  fill("recent", data.recent_examples.map((e) => row([num(e.id), el("td", e.question),
    el("td", e.state)])));
  const models = ["lorastream", "base"].concat(st.adapters.filter((a) => a.state === "promoted")
    .map((a) => "lorastream@v" + a.id));
  const sel = $("chat-model");
  if (sel.options.length !== models.length) {
    const keep = sel.value;
    sel.replaceChildren(...models.map((m) => el("option", m)));
    if (models.includes(keep)) sel.value = keep;
  }
}

function renderMatrix(m) {
  const head = $("matrix").tHead;
  const tr = document.createElement("tr");
  tr.appendChild(el("th", "version"));
  for (const s of m.streams) tr.appendChild(el("th", s === 0 ? "probe" : "stream " + s, "num"));
  head.replaceChildren(tr);
  const all = m.cells.flat().filter((v) => typeof v === "number" && isFinite(v));
  const lo = Math.min(...all), hi = Math.max(...all);
  fill("matrix", m.versions.map((v, i) => {
    const r = document.createElement("tr");
    const t = m.trained_on[i];
    r.appendChild(el("td", v === 0 ? "base" : "v" + v + (t ? " (stream " + t + ")" : "")));
    m.cells[i].forEach((c) => {
      const td = el("td", typeof c === "number" ? c.toFixed(2) : "—", "cell");
      if (typeof c === "number" && isFinite(c) && hi > lo) {
        // Green (low perplexity) to red (high), on a log scale.
        const x = (Math.log(c) - Math.log(lo)) / (Math.log(hi) - Math.log(lo));
        td.style.backgroundColor = "hsl(" + Math.round(120 * (1 - x)) + ", 65%, 82%)";
      }
      r.appendChild(td);
    });
    return r;
  }));
  const parts = [];
  if (m.average_ppl != null) parts.push("average perplexity of the last row " + m.average_ppl.toFixed(2));
  if (m.backward_transfer != null) parts.push("backward transfer " + m.backward_transfer.toFixed(3));
  const f = Object.entries(m.forgetting || {});
  if (f.length) parts.push("forgetting " + f.map(([s, v]) => "stream " + s + ": " + (100 * v).toFixed(1) + "%").join(", "));
  $("matrix-note").textContent = parts.join(" · ");
}

const COLORS = ["#2f5bd3", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#1098ad"];

function renderLoss(adapters) {
  const runs = adapters.filter((a) => a.train_log && Array.isArray(a.train_log.loss) && a.train_log.loss.length)
    .slice(-6);
  const cv = $("loss");
  const ctx = cv.getContext("2d");
  const W = cv.width, H = cv.height, pad = 28;
  ctx.clearRect(0, 0, W, H);
  ctx.font = "12px system-ui, sans-serif";
  const all = runs.flatMap((a) => a.train_log.loss).filter((v) => isFinite(v));
  $("loss-legend").replaceChildren();
  if (!all.length) { ctx.fillStyle = "#6a7380"; ctx.fillText("no training runs yet", pad, H / 2); return; }
  const lo = Math.min(...all), hi = Math.max(...all), span = hi - lo || 1;
  const n = Math.max(...runs.map((a) => a.train_log.loss.length));
  ctx.strokeStyle = "#e2e5ea"; ctx.strokeRect(pad, 4, W - pad - 4, H - pad);
  ctx.fillStyle = "#6a7380";
  ctx.fillText(hi.toFixed(2), 2, 12); ctx.fillText(lo.toFixed(2), 2, H - pad);
  ctx.fillText("step", W - 30, H - 8);
  runs.forEach((a, k) => {
    const ys = a.train_log.loss;
    ctx.strokeStyle = COLORS[k % COLORS.length]; ctx.lineWidth = 1.5; ctx.beginPath();
    ys.forEach((y, i) => {
      const px = pad + (W - pad - 8) * (n > 1 ? i / (n - 1) : 0);
      const py = 4 + (H - pad - 4) * (1 - (y - lo) / span);
      if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
    });
    ctx.stroke();
    const tag = el("span", "■ v" + a.id + " (stream " + a.stream_id + ")  ");
    tag.style.color = COLORS[k % COLORS.length];
    $("loss-legend").appendChild(tag);
  });
}

// The model's state from the public readiness probe: "loading" until the
// generation worker has it in memory.
async function readiness() {
  try {
    const r = await fetch("/ready");
    const j = await r.json();
    $("ready").textContent = j.status === "ready" ? "" :
      j.status === "loading" ? "model loading…" : "no model: " + (j.error || "");
    $("chat-send").disabled = j.status !== "ready";
  } catch (e) { /* the status line says the daemon is unreachable */ }
}

async function refresh() {
  await readiness();
  try {
    const r = await fetch("/api/status", { headers: headers() });
    if (r.ok) render(await r.json());
    else $("updated").textContent = "status: HTTP " + r.status +
      (r.status === 401 ? " (enter the API key)" : r.status === 403 ? " (status needs an admin key; chat works)" : "");
  } catch (e) {
    $("updated").textContent = "daemon unreachable: " + e;
  }
}

// Chat: the conversation is kept here and sent whole; answers stream in.
// Each browser is its own end user (a random id kept in local storage), and
// continues the conversation the server named in X-Conversation-Id.
let history = [];
let conversation = null;

function browserUser() {
  let u = localStorage.getItem("lorastream-user");
  if (!u) {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    u = "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    localStorage.setItem("lorastream-user", u);
  }
  return u;
}

function bubble(who, text) {
  const d = el("div", null, "msg");
  d.appendChild(el("b", who));
  const body = el("span", text);
  d.appendChild(body);
  $("chat-log").appendChild(d);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return body;
}

async function send(ev) {
  ev.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text) return;
  if ($("chat-key").value) localStorage.setItem("lorastream-key", $("chat-key").value);
  $("chat-input").value = "";
  $("chat-send").disabled = true;
  history.push({ role: "user", content: text });
  bubble("you", text);
  const out = bubble($("chat-model").value || "lorastream", "");
  out.classList.add("answer");
  let answer = "";
  try {
    const extra = { "Content-Type": "application/json" };
    if (conversation) extra["X-Conversation-Id"] = conversation;
    const r = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(extra),
      body: JSON.stringify({ model: $("chat-model").value || "lorastream", messages: history,
        stream: true, user: browserUser() }),
    });
    if (!r.ok) {
      const e = await r.json().catch(() => ({}));
      if (r.status === 404 && conversation) conversation = null;
      throw new Error((e.error && e.error.message) || "HTTP " + r.status);
    }
    conversation = r.headers.get("X-Conversation-Id") || conversation;
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, i); buf = buf.slice(i + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) { answer += delta.content; out.textContent = answer; }
        }
      }
      $("chat-log").scrollTop = $("chat-log").scrollHeight;
    }
    history.push({ role: "assistant", content: answer });
    out.parentNode.classList.add("done");
  } catch (e) {
    out.textContent = "error: " + e.message;
    out.classList.add("bad");
    history.pop();
  } finally {
    $("chat-send").disabled = false;
  }
}

$("chat-key").value = localStorage.getItem("lorastream-key") || "";
$("chat-form").addEventListener("submit", send);
$("chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
});
$("chat-reset").addEventListener("click", () => {
  history = []; conversation = null; $("chat-log").replaceChildren();
});
refresh();
setInterval(refresh, REFRESH_MS);
