// text2img web UI: token -> translate (editable English) -> job with live progress -> images.
// No framework, no build step, no third-party requests. Helpers: messages.js (Japanese
// error texts), gallery.js (IndexedDB, ZIP), results.js (result tiles and the gallery),
// model.js (the loaded model's name, sizes and options).
"use strict";

const TOKEN_KEY = "text2img.token";
const MAX_PROMPT = 1000; // the API's limit (schemas.MAX_PROMPT)
const PHASES = {
  starting_vm: "GPU サーバーを起動しています",
  booting: "サーバーが起動中です",
  loading_model: "モデルを読み込んでいます",
};
const $ = (id) => document.getElementById(id);
const state = {
  model: null, job: null, generating: false, waking: false,
  translatedFor: "", // the top-box text the English box was filled from
  englishEdited: false, // the user wrote in the English box: that text is drawn
  translationOff: false, // the service said it cannot translate (at load or on a click)
  translationKnownOff: false, // ... at load, in GET /v1/models (the button is off)
  acted: false, // the user did something (no error banners before that)
};

class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || null;
    this.param = err.param || null;
    this.retryAfter = retryAfter || err.retry_after || null;
  }
}

// ---- banners -----------------------------------------------------------------------------

// Banner texts are plain words; a `command` in backticks is shown as code, never as a
// literal backtick (the texts are ours, and are set as text nodes: no HTML).
function setRichText(node, text) {
  node.replaceChildren(...String(text).split("`").map((part, i) => {
    if (i % 2 === 0) return document.createTextNode(part);
    const code = document.createElement("code");
    code.textContent = part;
    return code;
  }));
}

function showBanner(text, kind = "error", detail = "") {
  setRichText($("banner-text"), text);
  $("banner-detail").textContent = detail;
  $("banner-details").hidden = !detail;
  $("banner-details").open = false;
  $("banner").className = "banner" + (kind === "error" ? "" : " " + kind);
  $("banner").hidden = false;
}
function hideBanner() { $("banner").hidden = true; }

function showError(err) {
  requestAnimationFrame(() => $("banner").scrollIntoView({ block: "nearest", behavior: "smooth" }));
  if (err instanceof ApiError) {
    const { text, detail } = T2I.japaneseError(err);
    showBanner(text, "error", detail);
  } else if (err instanceof TypeError) {
    showBanner("サーバーに接続できません。ネットワークを確認してください。", "error", String(err.message || err));
  } else {
    showBanner(String(err.message || err));
  }
}

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
    const err = new ApiError(res.status, data, Number(res.headers.get("Retry-After")) || null);
    if (res.status === 401) { askToken(err); throw err; }
    if (res.status === 503 && err.code === "waking") {
      const info = data.error;
      const wait = Math.max(1, err.retryAfter || 5);
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

// A page that needs a token asks for it calmly; only a token that was tried and refused
// (or a user action that needed one) is an error.
function askToken(err) {
  $("token-form").hidden = false;
  $("change-token").hidden = true;
  if (err && (token() || state.acted)) showError(err);
  else hideBanner();
  $("token-input").focus();
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
// the model's details fold away on a tap anywhere else
document.addEventListener("click", (ev) => {
  if (!$("model-badge").contains(ev.target)) $("model-badge").open = false;
});
$("banner-close").addEventListener("click", hideBanner);

// ---- the model: name, noise warning, sizes, options -------------------------------------

async function loadStatus() {
  try {
    const status = await (await api("/v1/status")).json();
    let entry = null;
    try {
      const models = await (await api("/v1/models")).json();
      entry = (models.data || []).find((m) => m.id === status.model) || (models.data || [])[0];
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) throw err;
    }
    applyModel({ id: status.model, ...(entry || {}) });
    $("change-token").hidden = !token();
    if (!status.ready) showBanner("モデルを読み込んでいます。少しお待ちください。", "info");
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showError(err);
  }
}

$("size").addEventListener("change", () => { state.sizeChosen = true; });

// ---- which text gets drawn ------------------------------------------------------------------

const isLatin = (text) => !/[^\p{Script=Latin}\P{L}]/u.test(text);

// {text, how}: the English that will be drawn, or null text when it must be translated first.
function plannedText() {
  const prompt = $("prompt").value.trim();
  const english = $("english").value.trim();
  if (english && (state.englishEdited || state.translatedFor === prompt)) return { text: english, how: "english" };
  if (!prompt) return { text: english || null, how: english ? "english" : "empty" };
  if (isLatin(prompt)) return { text: prompt, how: "prompt" };
  return { text: null, how: state.translationOff ? "cannot-translate" : "translate" };
}

function updateWillDraw() {
  const plan = plannedText();
  const line = $("will-draw");
  line.classList.toggle("warn", plan.how === "cannot-translate");
  line.replaceChildren();
  if (plan.how === "empty") return;
  if (plan.how === "translate") { line.textContent = "生成するときに上の文を英語に翻訳して、その英文を描きます。"; return; }
  if (plan.how === "cannot-translate") {
    line.textContent = "このサービスでは翻訳が使えません。英語のプロンプト欄に英語で書いてください（その文を描きます）。";
    return;
  }
  const text = document.createElement("q");
  text.lang = "en";
  text.textContent = plan.text;
  const note = plan.how === "english" && state.englishEdited && state.translatedFor !== $("prompt").value.trim()
    ? "（英語欄の文。上の文を変えても翻訳し直しません）" : "";
  line.append("描く文: ", text, note);
}

async function translatePrompt() {
  const text = $("prompt").value.trim();
  if (!text) return "";
  if (isLatin(text)) {
    fillEnglish(text, text, "");
    return text;
  }
  $("translate-btn").disabled = true;
  $("detected").textContent = "翻訳中…";
  try {
    const res = await api("/v1/translations", { method: "POST", body: { text, mode: "auto" } });
    const out = await res.json();
    fillEnglish(out.text, text, out.detected_language
      ? `検出された言語: ${out.detected_language}（英語は下で編集できます）` : "");
    return out.text;
  } catch (err) {
    if (err instanceof ApiError && ["translation_failed", "untranslatable_prompt"].includes(err.code)) {
      state.translationOff = true;
      updateWillDraw();
      $("english").focus();
    }
    throw err;
  } finally {
    $("translate-btn").disabled = state.translationKnownOff;
    if ($("detected").textContent === "翻訳中…") $("detected").textContent = "";
  }
}

function fillEnglish(english, from, note) {
  $("english").value = english;
  state.translatedFor = from;
  state.englishEdited = false;
  $("detected").textContent = note;
  updateCounters();
  updateWillDraw();
}

$("translate-btn").addEventListener("click", async () => {
  state.acted = true;
  hideBanner();
  try { await translatePrompt(); } catch (err) { showError(err); }
});

// ---- counters -------------------------------------------------------------------------------

function updateCounters() {
  let over = false;
  for (const [box, counter] of [["prompt", "prompt-count"], ["english", "english-count"]]) {
    const length = $(box).value.length;
    $(counter).textContent = `${length} / ${MAX_PROMPT} 文字` +
      (length > MAX_PROMPT ? `（${length - MAX_PROMPT} 文字多すぎます。${MAX_PROMPT} 文字までです）` : "");
    $(counter).classList.toggle("over", length > MAX_PROMPT);
    over = over || length > MAX_PROMPT;
  }
  $("generate-btn").disabled = state.generating || over;
}

$("prompt").addEventListener("input", () => {
  if (state.translatedFor && !state.englishEdited && $("prompt").value.trim() !== state.translatedFor) {
    $("detected").textContent = "プロンプトが変わりました。生成時に翻訳し直します。";
  }
  updateCounters();
  updateWillDraw();
});
$("english").addEventListener("input", () => {
  state.englishEdited = $("english").value.trim() !== "";
  updateCounters();
  updateWillDraw();
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
  const stage = stageLabel(p.stage);
  const steps = p.total ? ` ステップ ${p.step}/${p.total}` : "";
  return `${stage}${steps}（${Math.round(p.fraction * 100)}%）`;
}

const FINISHED = ["succeeded", "failed", "cancelled"];

// Server-sent events over fetch (EventSource cannot send the token): calls `onData` with
// each event's parsed `data:` JSON until it returns true or the stream ends.
async function readEvents(res, onData) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trim()).join("\n");
      if (data && onData(JSON.parse(data))) return;
    }
  }
}

async function follow(jobId, signal) {
  // the job's events; polls as a fallback
  try {
    const res = await api(`/v1/jobs/${jobId}/events`, { signal, headers: { Accept: "text/event-stream" } });
    let finished = false;
    await readEvents(res, (job) => {
      setProgress(job.progress.fraction, describeJob(job));
      finished = FINISHED.includes(job.status);
      return finished;
    });
    if (finished) return;
  } catch (err) {
    if (err.name === "AbortError") throw err;
  }
  for (;;) { // fallback: poll
    const job = await (await api(`/v1/jobs/${jobId}`, { signal })).json();
    setProgress(job.progress.fraction, describeJob(job));
    if (FINISHED.includes(job.status)) return;
    await sleep(700);
  }
}

// Where there is no job API (the Cloud Run backend: a follow-up may reach another instance),
// one streamed request carries progress and images (OpenAI's `stream: true` events).
async function streamGenerate(request, signal) {
  const res = await api("/v1/images/generations", {
    method: "POST", signal, body: { ...request, stream: true }, headers: { Accept: "text/event-stream" },
  });
  const data = [];
  await readEvents(res, (ev) => {
    if (ev.type === "text2img.progress") {
      const status = ev.stage === "queued" ? "queued" : "running";
      setProgress(ev.fraction, describeJob({ status, queue_position: ev.queue_position, progress: ev }));
    } else if (ev.type === "image_generation.completed") data.push(ev);
    else if (ev.type === "error") throw new ApiError(0, ev);
    return false;
  });
  const first = data[0] || {};
  return { id: "stream_" + Date.now(), status: "succeeded", data, revised_prompt: first.revised_prompt };
}

function setBusy(busy) {
  state.generating = busy;
  $("cancel-btn").hidden = !busy;
  $("progress-box").hidden = false;
  updateCounters();
}

$("gen-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (state.generating) return;
  state.acted = true;
  if (!state.model) await loadStatus(); // the first status call failed (network, token)
  if (!state.model) return;
  hideBanner();
  const original = $("prompt").value.trim();
  const controller = new AbortController();
  state.abort = controller;
  setBusy(true);
  setProgress(0, "準備中…");
  $("progress-box").scrollIntoView({ block: "nearest", behavior: "smooth" });
  try {
    const plan = plannedText();
    if (plan.how === "empty") throw new Error("描きたいものを入力してください。");
    if (plan.how === "cannot-translate" && state.translationKnownOff) {
      $("english").focus(); // known at load: no request that can only fail
      throw new Error(T2I.ERROR_TEXT.untranslatable_prompt);
    }
    const english = plan.text || (await translatePrompt());
    const options = readOptions();
    const request = { prompt: english, translate: "never", ...options };
    let done;
    try {
      const res = await api("/v1/jobs", { method: "POST", signal: controller.signal, body: request });
      const job = await res.json();
      state.job = job.id;
      setProgress(0, describeJob(job));
      await follow(job.id, controller.signal);
      done = await (await api(`/v1/jobs/${job.id}`)).json();
    } catch (err) {
      if (err.code !== "job_api_unavailable") throw err;
      done = await streamGenerate(request, controller.signal); // aborting it cancels the job
    }
    if (done.status === "succeeded") {
      const entry = await T2I.resultEntry(done, original || english, english, state.model, options);
      entry.truncated = (done.data || []).some((d) => d.prompt_truncated === true) || done.prompt_truncated === true;
      T2I.showResults(entry);
      setProgress(1, "完了");
      try { await T2I.saveJob(entry); } catch (_) { /* private mode: no gallery */ }
      await T2I.renderGallery();
    } else if (done.status === "cancelled") {
      setProgress(0, "キャンセルしました");
    } else {
      throw new ApiError(0, { error: done.error || { message: done.status } });
    }
  } catch (err) {
    if (err.name === "AbortError") setProgress(0, "キャンセルしました");
    else { showError(err); setProgress(0, "失敗しました"); }
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

// "use these settings again" from the gallery
function reuse(entry) {
  $("prompt").value = entry.prompt;
  $("english").value = entry.english;
  state.translatedFor = entry.prompt;
  state.englishEdited = entry.english !== entry.prompt;
  const s = entry.settings || {};
  if (s.n) $("n").value = String(s.n);
  if (s.size && state.model && state.model.sizes.includes(s.size)) { $("size").value = s.size; state.sizeChosen = true; }
  for (const control of document.querySelectorAll("[data-option]")) {
    const value = s[control.dataset.option];
    control.value = value == null ? "" : String(value);
    control.dispatchEvent(new Event("input"));
  }
  $("seed").value = s.seed != null ? String(s.seed) : "";
  $("options").open = true;
  updateCounters();
  updateWillDraw();
  window.scrollTo({ top: 0, behavior: "smooth" });
}

window.T2I = Object.assign(window.T2I || {}, { reuse });
updateCounters();
updateWillDraw();
T2I.renderGallery();
loadStatus();
