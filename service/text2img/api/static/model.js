// The loaded model as the page shows it: name, noise warning, sizes, the options it lists
// in GET /v1/models with their labels, its progress stage names, and whether translation
// works (with fallbacks for services whose entries lack those fields). A new engine's
// options and stages show up here from /v1/models alone: nothing in static/ names them.
// Uses app.js's `$` and `state` at call time (classic scripts share one global scope).
"use strict";

// labels for services whose /v1/models options carry no `label` (before labels were served)
const OPTION_LABELS = {
  guidance_scale: "ガイダンス", steps: "ステップ数", upsample_steps: "アップサンプルのステップ数",
  sampler: "サンプラー",
};
// what today's /v1/models lacks, filled in from what the service has always accepted
const FALLBACK_MODEL = {
  sizes: ["256x256", "64x64"], default_size: "256x256",
  options: {
    guidance_scale: { default: 3, minimum: 0, maximum: 20 },
    steps: { default: null, minimum: 1, maximum: 250 },
  },
};

// progress stage names for services whose /v1/models has no `stages`
const STAGE_LABELS = { base: "ベース", upsample: "アップサンプル", queued: "順番待ち", done: "完了" };

function applyModel(entry) {
  const noise = entry.random_weights ?? String(entry.id).startsWith("tiny");
  const model = {
    id: entry.id, title: entry.title || entry.id, random_weights: noise,
    licence: entry.licence || "",
    sizes: entry.sizes && entry.sizes.length ? entry.sizes : FALLBACK_MODEL.sizes,
    default_size: entry.default_size || (entry.sizes && entry.sizes[0]) || FALLBACK_MODEL.default_size,
    options: entry.options || FALLBACK_MODEL.options,
    stages: entry.stages || {},
  };
  state.model = model;
  renderBadge(model);
  $("tiny-model").textContent = model.id;
  $("tiny-warning").hidden = !noise;
  renderSizes(model);
  renderOptions(model);
  applyTranslation(entry.translation);
}

// One short line (the model's id); the title, licence and sizes on tap (or hover: title).
function renderBadge(model) {
  const badge = $("model-badge");
  badge.hidden = false;
  badge.open = false;
  badge.classList.toggle("tiny", model.random_weights);
  $("model-name").textContent = model.id;
  $("model-name").title = model.title;
  const line = (label, value) => {
    const row = document.createElement("div");
    const key = document.createElement("span");
    key.className = "muted";
    key.textContent = label + ": ";
    row.append(key, value);
    return row;
  };
  const rows = [line("モデル", model.title)];
  if (model.random_weights) rows.push(line("重み", "ランダム（テスト用。画像はノイズです）"));
  if (model.licence) rows.push(line("ライセンス", model.licence));
  rows.push(line("サイズ", model.sizes.map((s) => s.replace("x", "×")).join("、")));
  $("model-details").replaceChildren(...rows);
}

// What the service said at start about translation: when it cannot translate, say so once,
// calmly, next to the button, and turn the button off (no error after a useless click).
function applyTranslation(info) {
  const off = Boolean(info) && info.available === false;
  state.translationOff = off;
  state.translationKnownOff = off;
  const button = $("translate-btn");
  button.disabled = off;
  button.textContent = off ? "翻訳は使えません" : "英語に翻訳";
  $("translation-note").hidden = !off;
  $("translation-note-text").textContent = off
    ? "このサーバーでは翻訳を使えません。英語で書けば、そのまま描きます。" : "";
  // the server's own words (English, for the operator), without its Markdown backticks
  $("translation-note-detail").textContent = off ? (info.message || "").replaceAll("`", "") : "";
  $("translation-note-details").hidden = !(off && info.message);
  $("prompt-label").textContent = off ? "描きたいもの（英語で）" : "描きたいもの（日本語でも英語でも）";
  $("prompt").placeholder = off ? "例：a teddy bear swimming the butterfly stroke" : "例：テディベアがバタフライで泳いでいる";
  $("english").placeholder = off
    ? "（空欄）上の欄が英語なら空欄のままで構いません。"
    : "（空欄）翻訳するとここに英文が入ります。英語で直接書くこともできます。";
  updateWillDraw();
}

// labels served by /v1/models win; the page's own names are the fallback
function optionLabel(name) {
  const spec = state.model && state.model.options[name];
  return (spec && spec.label) || OPTION_LABELS[name] || null;
}
function stageLabel(name) {
  return (state.model && state.model.stages[name]) || STAGE_LABELS[name] || name;
}

function renderSizes(model) {
  const select = $("size");
  const keep = select.value;
  select.replaceChildren(...model.sizes.map((size) => {
    const o = document.createElement("option");
    o.value = size;
    o.textContent = size.replace("x", "×") + (size === model.default_size ? "（既定）" : "");
    return o;
  }));
  select.value = model.sizes.includes(keep) && state.sizeChosen ? keep : model.default_size;
}

function renderOptions(model) {
  for (const old of document.querySelectorAll("#grid-options .model-option")) old.remove();
  const grid = $("grid-options");
  for (const [name, spec] of Object.entries(model.options)) {
    const text = optionLabel(name);
    if (!text) continue; // no label: no control; the model's default applies
    const label = document.createElement("label");
    label.className = "model-option";
    label.title = spec.description || "";
    label.append(text + " ");
    let control;
    if (spec.choices) {
      control = document.createElement("select");
      for (const choice of spec.choices) {
        const o = document.createElement("option");
        o.value = String(choice);
        o.textContent = String(choice) + (choice === spec.default ? "（既定）" : "");
        control.append(o);
      }
      if (spec.default != null) control.value = String(spec.default);
    } else if (name === "guidance_scale") {
      const out = document.createElement("output");
      out.id = "guidance-out";
      control = document.createElement("input");
      control.type = "range";
      control.step = "0.5";
      control.addEventListener("input", () => { out.textContent = Number(control.value).toFixed(1); });
      label.append(out, " ");
      if (spec.minimum != null) control.min = String(spec.minimum);
      if (spec.maximum != null) control.max = String(spec.maximum);
      control.value = String(spec.default ?? 3);
      out.textContent = Number(control.value).toFixed(1);
    } else {
      control = document.createElement("input");
      control.type = "number";
      const whole = [spec.default, spec.minimum, spec.maximum].every((v) => v == null || Number.isInteger(v));
      control.step = whole ? "1" : "any";
      if (spec.minimum != null) control.min = String(spec.minimum);
      if (spec.maximum != null) control.max = String(spec.maximum);
      control.placeholder = spec.default != null ? `既定 ${spec.default}` : "既定";
    }
    control.id = { guidance_scale: "guidance", upsample_steps: "upsample-steps" }[name] || name;
    control.dataset.option = name;
    label.append(control);
    grid.insertBefore(label, $("seed").closest("label"));
  }
}
function readOptions() {
  const body = { n: Number($("n").value), size: $("size").value };
  for (const control of document.querySelectorAll("[data-option]")) {
    if (control.value === "") continue;
    const spec = state.model.options[control.dataset.option] || {};
    const numeric = typeof spec.default === "number" || spec.minimum != null;
    body[control.dataset.option] = numeric ? Number(control.value) : control.value;
  }
  if ($("seed").value) body.seed = Number($("seed").value);
  return body;
}

window.T2I = Object.assign(window.T2I || {}, { optionLabel, stageLabel });
