// text2img web UI: token -> translate (editable English) -> job with live progress -> images.
// No framework, no build step, no third-party requests.
"use strict";

const TOKEN_KEY = "text2img.token";
const HISTORY_KEY = "text2img.history";
const HISTORY_MAX = 12;
const PHASES = {
  starting_vm: "GPU サーバーを起動しています",
  booting: "サーバーが起動中です",
  loading_model: "モデルを読み込んでいます",
};
const STAGES = { base: "ベース 64×64", upsample: "アップサンプル 256×256", queued: "順番待ち", done: "完了" };

const $ = (id) => document.getElementById(id);
const state = { model: "", job: null, generating: false, translatedFor: "" };

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || null;
    this.param = err.param || null;
  }
}

// ---- banners ---------------------------------------------------------------------------

function showBanner(text, kind = "error") {
  $("banner-text").textContent = text;
  $("banner").className = "banner" + (kind === "error" ? "" : " " + kind);
  $("banner").hidden = false;
}
function hideBanner() { $("banner").hidden = true; }

// ---- API calls ---------------------------------------------------------------------------

function token() { return localStorage.getItem(TOKEN_KEY) || ""; }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// fetch with the token; waits out the gateway's "waking" 503s (shows phase and ETA).
async function api(path, { method = "GET", body, signal, headers = {} } = {}) {
  for (;;) {
    const h = { ...headers };
    if (token()) h["Authorization"] = "Bearer " + token();
    if (body !== undefined) h["Content-Type"] = "application/json";
    const res = await fetch(path, {
      method, headers: h, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (res.ok) { if (state.waking) { state.waking = false; hideBanner(); } return res; }
    let data = null;
    try { data = await res.json(); } catch (_) { /* not JSON */ }
    const err = new ApiError(res.status, data);
    if (res.status === 401) { askToken(err.message); throw err; }
    if (res.status === 503 && err.code === "waking") {
      const info = data.error;
      const wait = Math.max(1, Number(res.headers.get("Retry-After")) || info.retry_after || 5);
      await wakeCountdown(info.phase, info.eta_seconds, wait, signal);
      continue;
    }
    throw err;
  }
}

async function wakeCountdown(phase, eta, wait, signal) {
  state.waking = true;
  const label = PHASES[phase] || "サーバーを起動しています";
  for (let left = wait; left > 0; left--) {
    if (signal && signal.aborted) throw new DOMException("aborted", "AbortError");
    const etaText = eta ? `（完了まで約 ${Math.max(0, Math.round(eta))} 秒）` : "";
    showBanner(`${label}${etaText}… ${left} 秒後に自動で再試行します`, "info");
    await sleep(1000);
    if (eta) eta -= 1;
  }
}

// ---- token --------------------------------------------------------------------------------

function askToken(message) {
  $("token-form").hidden = false;
  $("token-input").focus();
  if (message) showBanner(message);
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
  $("token-input").value = "";
  $("token-form").hidden = true;
  hideBanner();
  loadStatus();
});
$("change-token").addEventListener("click", () => askToken());
$("banner-close").addEventListener("click", hideBanner);

async function loadStatus() {
  try {
    const status = await (await api("/v1/status")).json();
    state.model = status.model;
    const badge = $("model-badge");
    badge.hidden = false;
    badge.textContent = status.model === "tiny" ? "tiny（ランダムな重み）" : status.model;
    badge.classList.toggle("tiny", status.model === "tiny");
    $("tiny-warning").hidden = status.model !== "tiny";
    $("change-token").hidden = !token();
    if (!status.ready) showBanner("モデルを読み込んでいます。少しお待ちください。", "info");
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showBanner(describe(err));
  }
}

// ---- translation -------------------------------------------------------------------------

const isLatin = (text) => !/[^\p{Script=Latin}\P{L}]/u.test(text);

async function translatePrompt() {
  const text = $("prompt").value.trim();
  if (!text) return "";
  if (isLatin(text)) {
    $("english").value = text;
    $("detected").textContent = "";
    state.translatedFor = text;
    return text;
  }
  $("translate-btn").disabled = true;
  $("detected").textContent = "翻訳中…";
  try {
    const res = await api("/v1/translations", { method: "POST", body: { text, mode: "auto" } });
    const out = await res.json();
    $("english").value = out.text;
    state.translatedFor = text;
    $("detected").textContent = out.detected_language
      ? `検出された言語: ${out.detected_language}（英語は下で編集できます）` : "";
    return out.text;
  } finally {
    $("translate-btn").disabled = false;
    if ($("detected").textContent === "翻訳中…") $("detected").textContent = "";
  }
}

$("translate-btn").addEventListener("click", async () => {
  hideBanner();
  try { await translatePrompt(); } catch (err) { showBanner(describe(err)); }
});

// ---- generation ----------------------------------------------------------------------------

function setProgress(fraction, text) {
  const pct = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
  $("progress-fill").style.width = pct + "%";
  $("progress").setAttribute("aria-valuenow", String(pct));
  $("progress-text").textContent = text;
}

function describeJob(job) {
  if (job.status === "queued") {
    const pos = job.queue_position;
    return pos ? `順番待ち（前に ${pos} 件）` : "まもなく開始します";
  }
  const p = job.progress;
  const stage = STAGES[p.stage] || p.stage;
  const steps = p.total ? ` ステップ ${p.step}/${p.total}` : "";
  return `${stage}${steps}（${Math.round(p.fraction * 100)}%）`;
}

async function follow(jobId, signal) {
  // server-sent events over fetch (EventSource cannot send the token); polls as a fallback
  try {
    const res = await api(`/v1/jobs/${jobId}/events`, { signal, headers: { Accept: "text/event-stream" } });
    const reader = res.body.getReader();
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
        const data = block.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trim()).join("\n");
        if (!data) continue;
        const job = JSON.parse(data);
        setProgress(job.progress.fraction, describeJob(job));
        if (["succeeded", "failed", "cancelled"].includes(job.status)) return;
      }
    }
  } catch (err) {
    if (err.name === "AbortError") throw err;
  }
  for (;;) { // fallback: poll
    const job = await (await api(`/v1/jobs/${jobId}`, { signal })).json();
    setProgress(job.progress.fraction, describeJob(job));
    if (["succeeded", "failed", "cancelled"].includes(job.status)) return;
    await sleep(700);
  }
}

function readOptions() {
  const body = {
    n: Number($("n").value),
    size: $("size").value,
    guidance_scale: Number($("guidance").value),
  };
  if ($("steps").value) body.steps = Number($("steps").value);
  if ($("seed").value) body.seed = Number($("seed").value);
  return body;
}

function setBusy(busy) {
  state.generating = busy;
  $("generate-btn").disabled = busy;
  $("cancel-btn").hidden = !busy;
  $("progress-box").hidden = false;
}

$("gen-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (state.generating) return;
  hideBanner();
  const original = $("prompt").value.trim();
  const controller = new AbortController();
  state.abort = controller;
  setBusy(true);
  setProgress(0, "準備中…");
  try {
    let english = $("english").value.trim();
    if (!english || state.translatedFor !== original) english = await translatePrompt();
    if (!english) throw new Error("プロンプトを入力してください");
    const res = await api("/v1/jobs", {
      method: "POST", signal: controller.signal,
      body: { prompt: english, translate: "never", ...readOptions() },
    });
    const job = await res.json();
    state.job = job.id;
    setProgress(0, describeJob(job));
    await follow(job.id, controller.signal);
    const done = await (await api(`/v1/jobs/${job.id}`)).json();
    if (done.status === "succeeded") {
      showImages(done);
      remember(original || english, english);
      setProgress(1, "完了");
    } else if (done.status === "cancelled") {
      setProgress(0, "キャンセルしました");
    } else {
      throw new Error(`生成に失敗しました: ${(done.error && done.error.message) || done.status}`);
    }
  } catch (err) {
    if (err.name === "AbortError") setProgress(0, "キャンセルしました");
    else { showBanner(describe(err)); setProgress(0, "失敗しました"); }
  } finally {
    state.job = null;
    state.abort = null;
    setBusy(false);
  }
});

$("cancel-btn").addEventListener("click", async () => {
  const id = state.job;
  if (state.abort) state.abort.abort();
  if (id) { try { await api(`/v1/jobs/${id}`, { method: "DELETE" }); } catch (_) { /* gone */ } }
});

// a page closed mid-job should not keep the GPU busy
window.addEventListener("pagehide", () => {
  if (!state.job) return;
  fetch(`/v1/jobs/${state.job}`, {
    method: "DELETE", keepalive: true, headers: token() ? { Authorization: "Bearer " + token() } : {},
  });
});

function showImages(job) {
  const grid = $("grid");
  grid.replaceChildren();
  $("results").hidden = false;
  $("result-prompt").textContent = `描いた英文: ${job.revised_prompt}`;
  for (const [i, item] of job.data.entries()) {
    const bytes = Uint8Array.from(atob(item.b64_json), (c) => c.charCodeAt(0));
    const url = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
    const tile = document.createElement("figure");
    tile.className = "tile";
    const img = document.createElement("img");
    img.src = url;
    img.alt = `${job.revised_prompt} (${i + 1})`;
    tile.append(img);
    if (job.model === "tiny") {
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = "ランダムな重み";
      tile.append(label);
    }
    const bar = document.createElement("figcaption");
    bar.className = "bar";
    const seed = document.createElement("span");
    seed.className = "muted";
    seed.textContent = `seed ${item.seed}`;
    const link = document.createElement("a");
    link.href = url;
    link.download = `text2img-${item.seed}.png`;
    link.textContent = "ダウンロード";
    bar.append(seed, link);
    tile.append(bar);
    grid.append(tile);
  }
}

// ---- history -------------------------------------------------------------------------------

function loadHistory() {
  try { return JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]"); } catch (_) { return []; }
}

function remember(prompt, english) {
  const items = loadHistory().filter((h) => h.prompt !== prompt);
  items.unshift({ prompt, english, at: Date.now() });
  localStorage.setItem(HISTORY_KEY, JSON.stringify(items.slice(0, HISTORY_MAX)));
  renderHistory();
}

function renderHistory() {
  const items = loadHistory();
  $("history-box").hidden = items.length === 0;
  const list = $("history");
  list.replaceChildren();
  for (const h of items) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = h.prompt === h.english ? h.prompt : `${h.prompt} — ${h.english}`;
    b.addEventListener("click", () => {
      $("prompt").value = h.prompt;
      $("english").value = h.english;
      state.translatedFor = h.prompt;
      window.scrollTo({ top: 0, behavior: "smooth" });
    });
    li.append(b);
    list.append(li);
  }
}

// ---- misc --------------------------------------------------------------------------------

function describe(err) {
  if (err instanceof ApiError) {
    if (err.status === 429) return `混み合っています: ${err.message}`;
    if (err.status === 502) return `翻訳に失敗しました: ${err.message}`;
    return `エラー（${err.status}）: ${err.message}`;
  }
  if (err instanceof TypeError) return "サーバーに接続できません。ネットワークを確認してください。";
  return String(err.message || err);
}

$("guidance").addEventListener("input", () => {
  $("guidance-out").textContent = Number($("guidance").value).toFixed(1);
});
$("prompt").addEventListener("input", () => {
  // the English no longer matches what was typed; it is re-translated on generate
  if (state.translatedFor && $("prompt").value.trim() !== state.translatedFor) {
    $("detected").textContent = "プロンプトが変わりました。生成時に翻訳し直します。";
  }
});

renderHistory();
loadStatus();
