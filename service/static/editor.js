// Attention editor: plain JS, no dependencies. Talks to POST /attention,
// POST /attention/correct and GET /models of the same server.
"use strict";

const MAX_SIDE = 512; // displayed image side in CSS pixels (small images are enlarged)

const $ = (id) => document.getElementById(id);
const view = $("view");
const viewCtx = view.getContext("2d");
// The edited attention, grey (white = attention 1), covering the displayed image exactly.
const edit = document.createElement("canvas");
const editCtx = edit.getContext("2d", { willReadFrequently: true });

const state = {
  file: null, // the uploaded File, re-sent with every correction (the server caches it)
  bitmap: null,
  modelMap: null, // HTMLImageElement of the model's map PNG
  extent: null, // the map's extent in image pixels {x0, y0, x1, y1}
  scale: 1, // display pixels per image pixel
  drawing: false,
  last: null,
  cursor: null, // the keyboard brush's centre in display pixels {x, y}
  penDown: false, // the keyboard brush paints as it moves
  labelChosen: false, // the user picked the true class: answers no longer move it
  busy: false, // a request is in flight: the buttons wait for it
};

const EDIT_BUTTONS = ["clear-map", "reset-map", "submit", "save"];

// Buttons follow the state: an image to edit, no request in flight, and for saving a label
// list to pick from (it needs /models, which may need the API key first).
function updateButtons() {
  const ready = state.file !== null && !state.busy;
  for (const id of EDIT_BUTTONS) $(id).disabled = !ready;
  $("image-input").disabled = state.busy; // a file chosen meanwhile would be dropped
  view.tabIndex = state.file !== null ? 0 : -1; // a Tab stop only with something to edit
  if ($("label-select").options.length === 0) $("save").disabled = true;
}

function headers() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function setStatus(text) {
  $("status").textContent = text;
}

async function problemText(response) {
  try {
    const body = await response.json();
    return `${response.status} ${body.title || ""}: ${body.detail || ""}`;
  } catch (err) {
    return `${response.status} ${response.statusText}`;
  }
}

function showClass(element, result) {
  const name = result.label.replaceAll("_", " "); // as the true-class list shows it
  element.textContent = `${name} (${(100 * result.score).toFixed(1)} %)`;
  element.dataset.classId = String(result.class_id);
  element.dataset.label = result.label;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("cannot display the image"));
    image.src = src;
  });
}

function drawModelMap() {
  const e = state.extent;
  const s = state.scale;
  editCtx.globalCompositeOperation = "source-over";
  editCtx.globalAlpha = 1;
  editCtx.fillStyle = "#000";
  editCtx.fillRect(0, 0, edit.width, edit.height);
  editCtx.imageSmoothingEnabled = false; // keep the map's cells as the model made them
  editCtx.drawImage(state.modelMap, e.x0 * s, e.y0 * s, (e.x1 - e.x0) * s, (e.y1 - e.y0) * s);
}

function render() {
  if (!state.bitmap) return;
  // Cleared first: a transparent photo would otherwise keep every earlier overlay.
  viewCtx.clearRect(0, 0, view.width, view.height);
  viewCtx.globalAlpha = 1;
  viewCtx.imageSmoothingEnabled = true;
  viewCtx.drawImage(state.bitmap, 0, 0, view.width, view.height);
  const opacity = Number($("opacity").value) / 100;
  const src = editCtx.getImageData(0, 0, edit.width, edit.height).data;
  const overlay = viewCtx.createImageData(edit.width, edit.height);
  const out = overlay.data;
  for (let i = 0; i < src.length; i += 4) {
    const a = src[i] / 255; // attention 0..1 from the red (= grey) channel
    out[i] = 255;
    out[i + 1] = Math.round(200 * (1 - a));
    out[i + 2] = 0;
    out[i + 3] = Math.round(255 * opacity * a);
  }
  const layer = document.createElement("canvas");
  layer.width = edit.width;
  layer.height = edit.height;
  layer.getContext("2d").putImageData(overlay, 0, 0);
  viewCtx.drawImage(layer, 0, 0);
  drawKeyboardBrush();
}

// The keyboard brush's outline, on the view only (never on the edited map), while the
// image has the focus; filled while it is down.
function drawKeyboardBrush() {
  if (!state.cursor || document.activeElement !== view) return;
  const radius = Number($("brush-size").value) / 2;
  viewCtx.globalAlpha = 1;
  viewCtx.lineWidth = 2;
  viewCtx.strokeStyle = "#06c";
  viewCtx.fillStyle = "rgba(0, 102, 204, 0.25)";
  viewCtx.beginPath();
  viewCtx.arc(state.cursor.x, state.cursor.y, radius, 0, 2 * Math.PI);
  if (state.penDown) viewCtx.fill();
  viewCtx.stroke();
}

// Whatever was on screen belongs to the previous image: it goes before a new one is tried,
// so a failed upload can never leave the old image editable under the new file's name.
function forgetImage() {
  state.file = state.bitmap = state.modelMap = state.extent = state.cursor = null;
  state.penDown = false;
  $("brush-position").textContent = "";
  viewCtx.clearRect(0, 0, view.width, view.height);
  for (const id of ["original-class", "attention-branch-class", "corrected-class"]) {
    $(id).textContent = "–";
    delete $(id).dataset.classId;
    delete $(id).dataset.label;
  }
  $("save-status").textContent = "";
  delete $("save-status").dataset.feedbackId;
  updateButtons();
}

// fetch, with a network failure (server down, connection refused) as a readable error.
async function send(url, options) {
  try {
    return await fetch(url, options);
  } catch (err) {
    throw new Error(`the server could not be reached (${err.message}); try again`);
  }
}

async function classify(file) {
  forgetImage();
  let bitmap;
  try {
    // Shown before it is sent: a format the server reads but this browser cannot show
    // (TIFF) could not be edited, and its answers would not match what is on screen.
    bitmap = await loadImage(URL.createObjectURL(file));
  } catch (err) {
    setStatus("Error: this browser cannot display the image; send it as JPEG, PNG or WebP.");
    return;
  }
  const form = new FormData();
  form.append("image", file, file.name || "image");
  setStatus("Classifying…");
  const response = await send("/attention", { method: "POST", body: form, headers: headers() });
  if (!response.ok) {
    setStatus(`Error: ${await problemText(response)}`);
    return;
  }
  const body = await response.json();
  state.bitmap = bitmap;
  state.modelMap = await loadImage("data:image/png;base64," + body.attention_map.png_base64);
  const w = state.bitmap.naturalWidth;
  const h = state.bitmap.naturalHeight;
  state.scale = MAX_SIDE / Math.max(w, h);
  view.width = edit.width = Math.max(1, Math.round(w * state.scale));
  view.height = edit.height = Math.max(1, Math.round(h * state.scale));
  state.extent = body.attention_map.extent || { x0: 0, y0: 0, x1: w, y1: h };
  state.file = file;
  state.cursor = { x: view.width / 2, y: view.height / 2 };
  state.penDown = false;
  drawModelMap();
  render();
  showClass($("original-class"), body.prediction);
  showClass($("attention-branch-class"), body.attention_branch);
  state.labelChosen = false; // a new image: the model's answer is the first guess
  selectLabel(body.prediction.label);
  updateButtons();
  const outside = attentionOutside(w, h);
  setStatus(
    `Model ${body.model.name} v${body.model.version}: edit the map with the brush, then classify.` +
      (outside >= OUTSIDE_NOTE_SHARE
        ? ` ${Math.round(100 * outside)} % of the model's attention lies on the bars beside` +
          " this photo (the model sees it letterboxed into a square); the map you edit covers" +
          " the photo only, so even unedited it can give another answer."
        : "")
  );
}

// Below this share of the map's attention on the letterbox bars the difference is noise.
const OUTSIDE_NOTE_SHARE = 0.05;

// The share of the model's map (its cells, by value) whose centres fall outside the
// w x h image: attention on the letterbox bars of a non-square upload, which the edited
// map (stretched over the image) cannot carry.
function attentionOutside(w, h) {
  const map = state.modelMap;
  const cells = document.createElement("canvas");
  cells.width = map.naturalWidth;
  cells.height = map.naturalHeight;
  const ctx = cells.getContext("2d");
  ctx.drawImage(map, 0, 0);
  const values = ctx.getImageData(0, 0, cells.width, cells.height).data;
  const e = state.extent;
  let total = 0;
  let outside = 0;
  for (let row = 0; row < cells.height; row++) {
    for (let col = 0; col < cells.width; col++) {
      const v = values[4 * (row * cells.width + col)];
      const x = e.x0 + ((col + 0.5) * (e.x1 - e.x0)) / cells.width;
      const y = e.y0 + ((row + 0.5) * (e.y1 - e.y0)) / cells.height;
      total += v;
      if (x < 0 || x >= w || y < 0 || y >= h) outside += v;
    }
  }
  return total > 0 ? outside / total : 0;
}

function pointerPosition(event) {
  const rect = view.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) / rect.width) * view.width,
    y: ((event.clientY - rect.top) / rect.height) * view.height,
  };
}

function paint(from, to) {
  const mode = document.querySelector('input[name="brush-mode"]:checked').value;
  const size = Number($("brush-size").value);
  editCtx.globalCompositeOperation = "source-over";
  editCtx.globalAlpha = Number($("brush-strength").value) / 100;
  editCtx.strokeStyle = editCtx.fillStyle = mode === "add" ? "#fff" : "#000";
  editCtx.lineWidth = size;
  editCtx.lineCap = "round";
  editCtx.beginPath();
  if (from) {
    editCtx.moveTo(from.x, from.y);
    editCtx.lineTo(to.x, to.y);
    editCtx.stroke();
  } else {
    editCtx.arc(to.x, to.y, size / 2, 0, 2 * Math.PI);
    editCtx.fill();
  }
  render();
}

view.addEventListener("pointerdown", (event) => {
  if (!state.file) return; // not before the image's map is shown
  event.preventDefault();
  view.setPointerCapture(event.pointerId);
  state.drawing = true;
  state.last = state.cursor = pointerPosition(event); // the keyboard brush follows
  paint(null, state.last);
});
view.addEventListener("pointermove", (event) => {
  if (!state.drawing) return;
  event.preventDefault();
  const point = pointerPosition(event);
  paint(state.last, point);
  state.last = state.cursor = point;
});
for (const type of ["pointerup", "pointercancel", "pointerleave"]) {
  view.addEventListener(type, () => {
    state.drawing = false;
    state.last = null;
  });
}

// Keyboard painting, for whoever cannot drag a pointer: the same strokes as the pointer's.
// One arrow press moves the brush this many display pixels (under a third of the default
// 28-pixel brush, so a stroke's dabs overlap); with Shift four times as far.
const KEY_STEP = 8;
const KEY_MOVES = {
  ArrowLeft: [-1, 0],
  ArrowRight: [1, 0],
  ArrowUp: [0, -1],
  ArrowDown: [0, 1],
};

function showBrushPosition() {
  const c = state.cursor;
  $("brush-position").textContent =
    `Brush at ${Math.round(c.x / state.scale)}, ${Math.round(c.y / state.scale)} ` +
    `(image pixels), ${state.penDown ? "painting" : "lifted"}.`;
}

view.addEventListener("keydown", (event) => {
  // state.file and the cursor are set only once an image and its map are fully shown.
  if (!state.file || !state.cursor || event.altKey || event.ctrlKey || event.metaKey) return;
  const from = state.cursor;
  if (event.key in KEY_MOVES) {
    const [dx, dy] = KEY_MOVES[event.key];
    const step = KEY_STEP * (event.shiftKey ? 4 : 1);
    state.cursor = {
      x: Math.min(view.width - 1, Math.max(0, from.x + dx * step)),
      y: Math.min(view.height - 1, Math.max(0, from.y + dy * step)),
    };
    if (state.penDown) paint(from, state.cursor);
    else render();
  } else if ((event.key === " " || event.key === "Enter") && event.repeat) {
    event.preventDefault(); // a held key toggles or dabs once, not at the key-repeat rate
    return;
  } else if (event.key === " ") {
    state.penDown = !state.penDown;
    if (state.penDown) paint(null, from);
    else render();
  } else if (event.key === "Enter") {
    paint(null, from);
  } else if (event.key === "Escape") {
    state.penDown = false;
    render();
  } else {
    return;
  }
  event.preventDefault(); // no page scrolling under the brush
  showBrushPosition();
});
view.addEventListener("focus", () => {
  if (!state.file || !state.cursor) return;
  render();
  showBrushPosition();
});
view.addEventListener("blur", () => {
  state.penDown = false;
  render();
  if (state.cursor) showBrushPosition();
});

function maskBlob() {
  return new Promise((resolve) => edit.toBlob(resolve, "image/png"));
}

async function correct(save) {
  const form = new FormData();
  form.append("image", state.file, state.file.name || "image");
  form.append("mask", await maskBlob(), "mask.png");
  if (save) {
    form.append("label", $("label-select").value);
    form.append("save", "true");
  }
  const response = await send("/attention/correct", {
    method: "POST",
    body: form,
    headers: headers(),
  });
  if (!response.ok) {
    const text = `Error: ${await problemText(response)}`;
    if (save) $("save-status").textContent = text;
    else setStatus(text);
    return null;
  }
  const body = await response.json();
  showClass($("original-class"), body.original);
  showClass($("corrected-class"), body.corrected);
  return body;
}

// One request at a time from the buttons: a double click sends once, saves one record.
async function whileBusy(work) {
  if (state.busy) return;
  state.busy = true;
  updateButtons();
  try {
    await work();
  } finally {
    state.busy = false;
    updateButtons();
  }
}

$("image-input").addEventListener("change", (event) => {
  const file = event.target.files[0];
  // Emptied, so that choosing the same file again (say after typing the API key) is a
  // change too.
  event.target.value = "";
  if (file) {
    whileBusy(() => classify(file)).catch((err) => setStatus(`Error: ${err.message}`));
  }
});
$("opacity").addEventListener("input", render);
$("clear-map").addEventListener("click", () => {
  editCtx.globalCompositeOperation = "source-over";
  editCtx.globalAlpha = 1;
  editCtx.fillStyle = "#000";
  editCtx.fillRect(0, 0, edit.width, edit.height);
  render();
  setStatus("Empty map: paint where the classifier should look.");
});
$("reset-map").addEventListener("click", () => {
  drawModelMap();
  render();
});
$("submit").addEventListener("click", () =>
  whileBusy(async () => {
    setStatus("Classifying with your map…");
    $("corrected-class").textContent = "–";
    delete $("corrected-class").dataset.classId;
    const body = await correct(false);
    if (body) {
      setStatus(`Done (feature cache ${body.feature_cache}).`);
      if (!state.labelChosen) selectLabel(body.corrected.label);
    }
  }).catch((err) => setStatus(`Error: ${err.message}`))
);
$("save").addEventListener("click", () =>
  whileBusy(async () => {
    $("save-status").textContent = "Saving…";
    delete $("save-status").dataset.feedbackId;
    const body = await correct(true);
    if (body) {
      $("save-status").textContent = `Saved teacher map ${body.feedback_id}.`;
      $("save-status").dataset.feedbackId = body.feedback_id;
    }
  }).catch((err) => {
    $("save-status").textContent = `Error: ${err.message}`;
  })
);
$("label-select").addEventListener("change", () => {
  state.labelChosen = true;
});

function selectLabel(label) {
  const select = $("label-select");
  if ([...select.options].some((o) => o.value === label)) select.value = label;
}

async function loadLabels() {
  try {
    const response = await fetch("/models", { headers: headers() });
    if (!response.ok) return;
    const body = await response.json();
    const model = body.models.find((m) => m.task === "attention_classification");
    if (!model) return;
    const select = $("label-select");
    const chosen = select.value;
    select.replaceChildren(
      ...model.labels.map((label) => new Option(label.replaceAll("_", " "), label))
    );
    const shown = $("original-class").dataset.label;
    selectLabel(state.labelChosen ? chosen : shown || chosen);
  } catch (err) {
    // The labels only fill the save box; the editor works without them.
  } finally {
    updateButtons();
  }
}

// As the key is typed (once typing pauses), not only when the field loses focus: saving
// needs the label list, and clicking Save must not be what loads it.
let keyTimer = null;
$("api-key").addEventListener("input", () => {
  clearTimeout(keyTimer);
  keyTimer = setTimeout(loadLabels, 300);
});
loadLabels();
