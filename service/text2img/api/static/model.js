// The loaded model as the page shows it: name, noise warning, sizes and the options it
// lists in GET /v1/models (with a fallback for services whose entries lack those fields).
// Uses app.js's `$` and `state` at call time (classic scripts share one global scope).
"use strict";

// the request options this page has controls for; a model's /v1/models entry says which apply
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

function applyModel(entry) {
  const noise = entry.random_weights ?? String(entry.id).startsWith("tiny");
  const model = {
    id: entry.id, title: entry.title || entry.id, random_weights: noise,
    sizes: entry.sizes && entry.sizes.length ? entry.sizes : FALLBACK_MODEL.sizes,
    default_size: entry.default_size || (entry.sizes && entry.sizes[0]) || FALLBACK_MODEL.default_size,
    options: entry.options || FALLBACK_MODEL.options,
  };
  state.model = model;
  const badge = $("model-badge");
  badge.hidden = false;
  const name = model.title === model.id ? model.id : `${model.title}（${model.id}）`;
  badge.textContent = noise ? `${name}・ランダムな重み` : name;
  badge.title = model.id;
  badge.classList.toggle("tiny", noise);
  $("tiny-model").textContent = model.id;
  $("tiny-warning").hidden = !noise;
  renderSizes(model);
  renderOptions(model);
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
    if (!(name in OPTION_LABELS)) continue; // no control for it: the model's default applies
    const label = document.createElement("label");
    label.className = "model-option";
    label.title = spec.description || "";
    label.append(OPTION_LABELS[name] + " ");
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
