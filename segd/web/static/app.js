// segd's page: live parts, drag-and-drop into the inbox, the result viewer. No libraries.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const refreshMs = Number(document.querySelector('meta[name="refresh-ms"]').content) || 3000;

// --- live parts: [data-refresh] elements re-fetch their fragment while the tab is visible ------
function refresh() {
  if (document.hidden) return;
  for (const element of document.querySelectorAll("[data-refresh]")) {
    fetch(element.dataset.refresh, { credentials: "same-origin" })
      .then((response) => (response.ok ? response.text() : null))
      .then((html) => {
        if (html !== null && html !== element.dataset.last && html.trim() !== element.innerHTML.trim()) {
          element.innerHTML = html;
        }
        element.dataset.last = html;
      })
      .catch(() => {});
  }
}
if (document.querySelector("[data-refresh]")) setInterval(refresh, refreshMs);

// --- uploads: one request per file, the bytes as the body ---------------------------------------
const list = document.getElementById("uploads");

function note(text, ok) {
  const item = document.createElement("li");
  item.className = ok ? "ok" : "bad";
  item.textContent = text;
  list.prepend(item);
  setTimeout(() => item.remove(), ok ? 8000 : 30000);
  return item;
}

async function upload(file) {
  const item = note(`${file.name}: uploading…`, true);
  try {
    const response = await fetch("/upload", {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "X-File-Name": encodeURIComponent(file.name) },
      body: file,
    });
    const answer = await response.json().catch(() => ({ error: response.statusText }));
    item.className = response.ok ? "ok" : "bad";
    item.textContent = response.ok ? `${file.name}: in the inbox` : `${answer.error}`;
  } catch (error) {
    item.className = "bad";
    item.textContent = `${file.name}: upload failed (${error})`;
  }
}

const overlay = document.getElementById("drop-overlay");
let depth = 0;
window.addEventListener("dragenter", (event) => {
  if (!event.dataTransfer || !event.dataTransfer.types.includes("Files")) return;
  depth += 1;
  overlay.hidden = false;
});
window.addEventListener("dragleave", () => {
  depth = Math.max(0, depth - 1);
  if (depth === 0) overlay.hidden = true;
});
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => {
  event.preventDefault();
  depth = 0;
  overlay.hidden = true;
  const items = Array.from(event.dataTransfer.items || []);
  items.forEach((item, i) => {
    const entry = item.webkitGetAsEntry && item.webkitGetAsEntry();
    if (entry && entry.isDirectory) {
      note(`${entry.name}: folders cannot be dropped here; copy the folder into the inbox`, false);
    } else {
      const file = item.getAsFile() || event.dataTransfer.files[i];
      if (file) upload(file);
    }
  });
});
const input = document.getElementById("file-input");
input.addEventListener("change", () => {
  Array.from(input.files).forEach(upload);
  input.value = "";
});

// --- result page: switch views, highlight a segment on hover ------------------------------------
const view = document.getElementById("view");
for (const button of document.querySelectorAll("[data-view]")) {
  button.addEventListener("click", () => {
    view.src = button.dataset.view;
    document.querySelectorAll("[data-view]").forEach((b) => b.classList.toggle("active", b === button));
  });
}

const canvas = document.getElementById("highlight");
let colorPixels = null;
if (canvas) {
  const picture = new Image();
  picture.onload = () => {
    const scratch = document.createElement("canvas");
    scratch.width = picture.naturalWidth;
    scratch.height = picture.naturalHeight;
    const context = scratch.getContext("2d", { willReadFrequently: true });
    context.drawImage(picture, 0, 0);
    colorPixels = context.getImageData(0, 0, scratch.width, scratch.height);
    canvas.width = scratch.width;
    canvas.height = scratch.height;
  };
  picture.src = canvas.dataset.colorMap;
}

function highlight(row) {
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!row || !colorPixels || !row.dataset.color) return;
  const hex = row.dataset.color;
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  const out = context.createImageData(colorPixels.width, colorPixels.height);
  const src = colorPixels.data;
  const dst = out.data;
  for (let i = 0; i < src.length; i += 4) {
    const inside = src[i] === r && src[i + 1] === g && src[i + 2] === b;
    dst[i] = inside ? 255 : 0;
    dst[i + 1] = inside ? 255 : 0;
    dst[i + 2] = inside ? 255 : 0;
    dst[i + 3] = inside ? 90 : 150;
  }
  context.putImageData(out, 0, 0);
  const box = row.dataset.bbox.split(",").map(Number);
  if (box.length === 4) {
    context.strokeStyle = hex;
    context.lineWidth = Math.max(2, canvas.width / 300);
    context.strokeRect(box[0], box[1], box[2], box[3]);
  }
}

for (const row of document.querySelectorAll("tr[data-id]")) {
  row.addEventListener("mouseenter", () => { row.classList.add("hover"); highlight(row); });
  row.addEventListener("mouseleave", () => { row.classList.remove("hover"); highlight(null); });
}
