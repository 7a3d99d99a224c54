// Result tiles (copy seed, download one, download all as a ZIP) and the gallery of past
// results kept in this browser, with "use these settings again".
"use strict";

const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};

// A finished job as a gallery entry: the PNGs as Blobs plus everything needed to redo it.
async function resultEntry(job, prompt, english, model, options) {
  const images = job.data.map((item) => ({
    seed: item.seed,
    png: new Blob([Uint8Array.from(atob(item.b64_json), (c) => c.charCodeAt(0))], { type: "image/png" }),
  }));
  return {
    id: job.id, at: Date.now(), prompt, english: job.revised_prompt || english,
    model: job.model || model.id, title: model.title, random_weights: model.random_weights,
    settings: { ...options, seed: images.length ? images[0].seed : options.seed },
    images,
  };
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) { // no clipboard permission (plain http on a LAN address): select-and-copy
    const area = el("textarea", { value: text });
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const before = button.textContent;
  button.textContent = "コピーしました";
  setTimeout(() => { button.textContent = before; }, 1500);
}

function tile(entry, image, index, big) {
  const url = URL.createObjectURL(image.png);
  const img = el("img", { src: url, alt: `${entry.english} (${index + 1})` });
  img.addEventListener("load", () => img.classList.toggle("pixelated", img.naturalWidth < 200));
  const figure = el("figure", { className: big ? "tile" : "tile small" }, img);
  if (entry.random_weights) figure.append(el("span", { className: "label", textContent: "ランダムな重み" }));
  if (!big) return figure;
  const copy = el("button", { type: "button", className: "link copy-seed", textContent: "シードをコピー" });
  copy.addEventListener("click", () => copyText(String(image.seed), copy));
  const link = el("a", { href: url, download: `text2img-${image.seed}.png`, textContent: "ダウンロード" });
  figure.append(el("figcaption", { className: "bar" },
    el("span", { className: "muted seed", textContent: `seed ${image.seed}` }),
    el("span", { className: "actions" }, copy, link)));
  return figure;
}

function zipName(entry) {
  const first = entry.images[0] ? entry.images[0].seed : 0;
  return `text2img-${first}-x${entry.images.length}.zip`;
}

function showResults(entry) {
  const grid = document.getElementById("grid");
  grid.replaceChildren(...entry.images.map((image, i) => tile(entry, image, i, true)));
  document.getElementById("results").hidden = false;
  document.getElementById("result-prompt").textContent = `描いた英文: ${entry.english}`;
  // the engine cut a prompt longer than its text encoder reads: say so, with what was drawn
  document.getElementById("result-note").hidden = !entry.truncated;
  document.getElementById("download-all").onclick = () => T2I.downloadZip(zipName(entry), entry.images);
  document.getElementById("results").scrollIntoView({ behavior: "smooth", block: "start" });
}

async function renderGallery() {
  let entries = [];
  try { entries = await T2I.listJobs(); } catch (_) { /* IndexedDB unavailable */ }
  const box = document.getElementById("gallery-box");
  box.hidden = entries.length === 0;
  const list = document.getElementById("gallery");
  list.replaceChildren();
  for (const entry of entries) {
    const s = entry.settings || {};
    const when = new Date(entry.at).toLocaleString("ja-JP");
    const facts = [entry.model || entry.title, s.size, `${entry.images.length} 枚`,
      `seed ${s.seed}`, s.steps ? `${s.steps} ステップ` : "", when].filter(Boolean).join(" · ");
    const reuse = el("button", { type: "button", className: "secondary reuse", textContent: "この設定でもう一度" });
    reuse.addEventListener("click", () => T2I.reuse(entry));
    const zip = el("button", { type: "button", className: "secondary zip", textContent: "すべてダウンロード" });
    zip.addEventListener("click", () => T2I.downloadZip(zipName(entry), entry.images));
    const remove = el("button", { type: "button", className: "link remove", textContent: "削除" });
    remove.addEventListener("click", async () => { await T2I.deleteJob(entry.id); renderGallery(); });
    const text = el("div", { className: "text" },
      el("div", { className: "prompt", textContent: entry.prompt }),
      entry.english !== entry.prompt ? el("div", { className: "muted english", lang: "en", textContent: entry.english }) : "",
      el("div", { className: "muted facts", textContent: facts }));
    list.append(el("li", { className: "entry" },
      el("div", { className: "thumbs" }, ...entry.images.map((image, i) => tile(entry, image, i, false))),
      text, el("div", { className: "row" }, reuse, zip, remove)));
  }
}

window.T2I = Object.assign(window.T2I || {}, { resultEntry, showResults, renderGallery });
