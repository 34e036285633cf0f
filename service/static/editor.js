// Attention editor: plain JS, no dependencies. Talks to POST /attention,
// POST /attention/correct and GET /models of the same server, by relative URLs, so that
// the page works behind a proxy that serves the API under a path prefix.
"use strict";

const MAX_SIDE = 512; // displayed side of the map's square in CSS pixels (small images are enlarged)
// The formats the server reads that a browser can also show (TIFF it reads, but cannot be
// shown, so it cannot be edited).
const SHOWN_FORMATS = "JPEG, PNG, WebP, GIF or BMP";

const $ = (id) => document.getElementById(id);
const view = $("view");
const viewCtx = view.getContext("2d");
// The edited attention, grey (white = attention 1), covering the map's extent exactly:
// the model's whole square input, letterbox bars included, so that an unedited map sent
// back is the model's own and attention on the bars can be kept or moved.
const edit = document.createElement("canvas");
const editCtx = edit.getContext("2d", { willReadFrequently: true });
// One stroke is drawn opaque on its own layer and laid over the map as it was when the
// stroke began, at the brush's strength: where a stroke crosses itself (a slow drag, the
// round ends of its segments) it is no stronger than where it passes once.
const strokeBase = document.createElement("canvas");
const strokeLayer = document.createElement("canvas");
const stroke = { active: false, colour: "#fff", alpha: 1, shown: null };

const state = {
  file: null, // the uploaded File, re-sent with every correction (the server caches it)
  bitmap: null,
  modelMap: null, // HTMLImageElement of the model's map PNG
  extent: null, // the map's extent in image pixels {x0, y0, x1, y1}
  scale: 1, // display pixels per image pixel
  drawing: false,
  pointerId: null, // the one pointer that paints (a second finger is ignored)
  last: null,
  cursor: null, // the keyboard brush's centre in display pixels {x, y}
  penDown: false, // the keyboard brush paints as it moves
  mapGeneration: 0, // counts edits: an answer to an older map is shown as out of date
  busy: false, // a request is in flight: the buttons wait for it
  saved: null, // the map generation and true class last saved {generation, label}
};

const EDIT_BUTTONS = ["clear-map", "reset-map", "submit", "save"];

// Buttons follow the state: an image to edit, no request in flight, and for saving a true
// class the user picked (the list needs /models, which may need the API key first). The
// model's own answer is never preselected: one click would store the model's guess as
// the truth, which teaches the next version nothing. Nor is the map just saved with the
// same class saved again: the duplicate would weigh that example twice in fine-tuning.
function updateButtons() {
  const ready = state.file !== null && !state.busy;
  for (const id of EDIT_BUTTONS) $(id).disabled = !ready;
  $("image-input").disabled = state.busy; // a file chosen meanwhile would be dropped
  view.tabIndex = state.file !== null ? 0 : -1; // a Tab stop only with something to edit
  const label = $("label-select").value;
  const saved = state.saved;
  const unchanged =
    saved !== null && saved.generation === state.mapGeneration && saved.label === label;
  if (label === "" || unchanged) $("save").disabled = true;
}

// A header value fetch can send: printable ISO-8859-1 (the server reads headers as Latin-1,
// so any such key it is configured with works); a control character or one past Latin-1 is
// a typing or pasting mistake worth naming.
const KEY_PATTERN = /^[\x20-\x7e\xa0-\xff]*$/;

function headers() {
  const key = $("api-key").value.trim();
  if (!KEY_PATTERN.test(key)) {
    throw new Error("the API key holds a character no HTTP header can carry");
  }
  return key ? { "X-API-Key": key } : {};
}

// Said after a 401; once the key typed since is accepted, the status line says so instead
// of still asking for a valid key.
const KEY_HINT = " (enter a valid API key above, then try again)";
let statusAsksForKey = false;

function setStatus(text) {
  $("status").textContent = text;
  statusAsksForKey = text.includes(KEY_HINT);
}

// What the page says about a failed request: the problem document's title and detail,
// what to do about a missing key, and when to retry an overloaded server.
async function problemText(response) {
  let text = `${response.status} ${response.statusText}`;
  if (isJson(response)) {
    try {
      const body = await response.json();
      text = `${response.status} ${body.title || ""}: ${body.detail || ""}`;
    } catch (err) {
      // A body that does not parse: the status line says what there is to say.
    }
  }
  if (response.status === 401) text += KEY_HINT;
  const retry = response.headers.get("Retry-After");
  if (retry && /^\d+$/.test(retry)) text += `; try again in ${retry} s`;
  return text;
}

function isJson(response) {
  return /^application\/([\w.+-]+\+)?json\b/.test(response.headers.get("Content-Type") || "");
}

// The JSON body of a successful answer; something else (a proxy's or a captive portal's
// HTML page) is named as such rather than shown as a parse error.
async function jsonBody(response) {
  if (!isJson(response)) {
    throw new Error(
      `the server answered ${response.headers.get("Content-Type") || "no content type"}, ` +
        "not JSON (is something between this page and the service?)"
    );
  }
  return response.json();
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

// The photo, decoded by the browser from its File; the object URL goes once it has loaded
// (the decoded image stays drawable), so a session of uploads does not keep every file.
async function loadPhoto(file) {
  const url = URL.createObjectURL(file);
  try {
    return await loadImage(url);
  } finally {
    URL.revokeObjectURL(url);
  }
}

// The rectangle the map covers, in image pixels: the server's `extent`, or, from a server
// that sends none (API.md has the map cover the model's square input), the square the
// image is letterboxed into, centred.
function extentOf(body, w, h) {
  if (body.attention_map.extent) return body.attention_map.extent;
  const side = Math.max(w, h);
  return { x0: (w - side) / 2, y0: (h - side) / 2, x1: (w + side) / 2, y1: (h + side) / 2 };
}

// The photo's rectangle on the view (and the edit canvas), in display pixels.
function photoRect() {
  const e = state.extent;
  const s = state.scale;
  return {
    x: -e.x0 * s,
    y: -e.y0 * s,
    w: state.bitmap.naturalWidth * s,
    h: state.bitmap.naturalHeight * s,
  };
}

function drawModelMap() {
  endStroke();
  editCtx.globalCompositeOperation = "source-over";
  editCtx.globalAlpha = 1;
  editCtx.fillStyle = "#000";
  editCtx.fillRect(0, 0, edit.width, edit.height);
  editCtx.imageSmoothingEnabled = false; // keep the map's cells as the model made them
  editCtx.drawImage(state.modelMap, 0, 0, edit.width, edit.height);
}

// The letterbox bars around a non-square photo, as the view shows them: not the photo,
// but part of what the model sees and of the map.
const BAR_COLOUR = "#b8b8b8";

function render() {
  if (!state.bitmap) return;
  // Cleared first: a transparent photo would otherwise keep every earlier overlay.
  viewCtx.clearRect(0, 0, view.width, view.height);
  viewCtx.globalAlpha = 1;
  const photo = photoRect();
  viewCtx.fillStyle = BAR_COLOUR;
  viewCtx.fillRect(0, 0, view.width, view.height);
  viewCtx.clearRect(photo.x, photo.y, photo.w, photo.h);
  viewCtx.imageSmoothingEnabled = true;
  viewCtx.drawImage(state.bitmap, photo.x, photo.y, photo.w, photo.h);
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

function clearResult(id) {
  $(id).textContent = "–";
  delete $(id).dataset.classId;
  delete $(id).dataset.label;
}

function clearSaveStatus() {
  $("save-status").textContent = "";
  delete $("save-status").dataset.feedbackId;
}

// Whatever was on screen belongs to the previous image: it goes before a new one is tried,
// so a failed upload can never leave the old image editable under the new file's name.
function forgetImage() {
  endStroke();
  state.file = state.bitmap = state.modelMap = state.extent = state.cursor = null;
  state.saved = null;
  state.penDown = state.drawing = false;
  state.pointerId = null;
  $("brush-position").textContent = "";
  $("image-name").textContent = "";
  viewCtx.clearRect(0, 0, view.width, view.height);
  for (const id of ["original-class", "attention-branch-class", "corrected-class"]) {
    clearResult(id);
  }
  clearSaveStatus();
  $("label-select").value = ""; // the true class is picked anew for each image
  updateButtons();
}

// The answer with the map and the saved record shown belong to the map as it was: an edit
// makes them out of date, and the page says so rather than showing them as current.
function mapChanged() {
  state.mapGeneration += 1;
  const corrected = $("corrected-class");
  if (corrected.dataset.classId !== undefined) {
    clearResult("corrected-class");
    corrected.textContent = "– (map changed: classify again)";
  }
  clearSaveStatus();
  updateButtons(); // a changed map can be saved again
}

// fetch, with a network failure (server down, connection refused) as a readable error.
// How long a request may wait for the server's answer to begin. The slowest measured is
// far below it (a 36-megapixel photo, about 4.5 s on 2 CPUs); without a limit a server that
// hangs left the page disabled until reloaded, and the edit lost with it.
const ANSWER_TIMEOUT_MS = 60_000;

async function send(url, options) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), ANSWER_TIMEOUT_MS);
  try {
    return await fetch(url, { ...options, signal: controller.signal });
  } catch (err) {
    if (controller.signal.aborted) {
      throw new Error(`the server did not answer within ${ANSWER_TIMEOUT_MS / 1000} s; try again`);
    }
    throw new Error(`the server could not be reached (${err.message}); try again`);
  } finally {
    clearTimeout(timer);
  }
}

async function classify(file) {
  forgetImage();
  let photo;
  try {
    // Shown before it is sent: a format the server reads but this browser cannot show
    // (TIFF) could not be edited, and its answers would not match what is on screen.
    photo = await loadPhoto(file);
  } catch (err) {
    setStatus(`Error: this browser cannot show this file as an image; send ${SHOWN_FORMATS}.`);
    return;
  }
  const form = new FormData();
  form.append("image", file, file.name || "image");
  setStatus("Classifying…");
  const response = await send("attention", { method: "POST", body: form, headers: headers() });
  if (!response.ok) {
    setStatus(`Error: ${await problemText(response)}`);
    return;
  }
  const body = await jsonBody(response);
  const modelMap = await loadImage("data:image/png;base64," + body.attention_map.png_base64);
  const w = photo.naturalWidth;
  const h = photo.naturalHeight;
  const e = extentOf(body, w, h);
  state.bitmap = photo;
  state.modelMap = modelMap;
  state.extent = e;
  state.scale = MAX_SIDE / Math.max(e.x1 - e.x0, e.y1 - e.y0);
  view.width = edit.width = Math.max(1, Math.round((e.x1 - e.x0) * state.scale));
  view.height = edit.height = Math.max(1, Math.round((e.y1 - e.y0) * state.scale));
  state.file = file;
  state.cursor = { x: view.width / 2, y: view.height / 2 };
  state.penDown = false;
  drawModelMap();
  render();
  showClass($("original-class"), body.prediction);
  showClass($("attention-branch-class"), body.attention_branch);
  $("image-name").textContent = `Image: ${file.name || "(unnamed)"}, ${w} x ${h} pixels.`;
  updateButtons();
  if (labelsWanted) loadLabels(); // the last try failed: again, as its message says
  const barred = e.x0 < 0 || e.y0 < 0 || e.x1 > w || e.y1 > h;
  setStatus(
    `Model ${body.model.name} v${body.model.version}: edit the map with the brush, then classify.` +
      (barred
        ? " The grey bars mark the letterbox the model sees around this photo (its" +
          " pre-processing fills them); the attention there is part of the map and can be kept," +
          " moved or erased like the rest."
        : "")
  );
}

function pointerPosition(event) {
  const rect = view.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) / rect.width) * view.width,
    y: ((event.clientY - rect.top) / rect.height) * view.height,
  };
}

// What a stroke's start marks out of date, kept until the stroke is known to be paint: a
// cancelled one (a pinch) leaves the map as it was, so it puts these back too.
function shownResults() {
  const corrected = $("corrected-class");
  const saved = $("save-status");
  return {
    generation: state.mapGeneration,
    corrected: [corrected.textContent, { ...corrected.dataset }],
    saved: [saved.textContent, { ...saved.dataset }],
  };
}

function restoreResults(shown) {
  state.mapGeneration = shown.generation;
  for (const [id, [text, data]] of [
    ["corrected-class", shown.corrected],
    ["save-status", shown.saved],
  ]) {
    const element = $(id);
    element.textContent = text;
    for (const key of Object.keys(element.dataset)) delete element.dataset[key];
    Object.assign(element.dataset, data);
  }
  updateButtons(); // the map just saved is back: not to be saved twice
}

// A stroke starts from the map as it is, in the brush's mode and strength at that moment.
function beginStroke() {
  endStroke();
  stroke.shown = shownResults();
  const mode = document.querySelector('input[name="brush-mode"]:checked').value;
  stroke.colour = mode === "add" ? "#fff" : "#000";
  stroke.alpha = Number($("brush-strength").value) / 100;
  for (const canvas of [strokeBase, strokeLayer]) {
    canvas.width = edit.width; // also clears it
    canvas.height = edit.height;
  }
  strokeBase.getContext("2d").drawImage(edit, 0, 0);
  stroke.active = true;
  mapChanged();
}

// One segment of the stroke (a dab without `from`), then the map recomposed: the map as
// the stroke began, with the whole stroke over it at the brush's strength.
function strokeTo(from, to) {
  if (!stroke.active) beginStroke();
  const size = Number($("brush-size").value);
  const ctx = strokeLayer.getContext("2d");
  ctx.strokeStyle = ctx.fillStyle = stroke.colour;
  ctx.lineWidth = size;
  ctx.lineCap = "round";
  ctx.beginPath();
  if (from) {
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
  } else {
    ctx.arc(to.x, to.y, size / 2, 0, 2 * Math.PI);
    ctx.fill();
  }
  editCtx.globalCompositeOperation = "source-over";
  editCtx.globalAlpha = 1;
  editCtx.drawImage(strokeBase, 0, 0);
  editCtx.globalAlpha = stroke.alpha;
  editCtx.drawImage(strokeLayer, 0, 0);
  editCtx.globalAlpha = 1;
  render();
}

function endStroke() {
  stroke.active = false;
}

view.addEventListener("pointerdown", (event) => {
  // Not before the image's map is shown; and one pointer paints: a second finger would
  // otherwise join its stroke to the first one's with a band across the map.
  if (!state.file || state.drawing) return;
  // A mouse paints with its primary button only: a right click is for the context menu, a
  // middle one for scrolling (a finger or a pen on the screen paints).
  if (event.pointerType === "mouse" && event.button !== 0) return;
  event.preventDefault();
  view.setPointerCapture(event.pointerId);
  state.drawing = true;
  state.pointerId = event.pointerId;
  state.penDown = false;
  state.last = state.cursor = pointerPosition(event); // the keyboard brush follows
  // The keys then move this same brush; focused once it is here, so that what the focus
  // shows and says is where the pointer is, not where the keys left the brush.
  view.focus({ preventScroll: true });
  beginStroke();
  strokeTo(null, state.last);
  showBrushPosition();
});
view.addEventListener("pointermove", (event) => {
  if (!state.drawing || event.pointerId !== state.pointerId) return;
  event.preventDefault();
  const point = pointerPosition(event);
  state.cursor = point; // before the stroke's render draws the brush's outline there
  strokeTo(state.last, point);
  state.last = point;
  showBrushPosition();
});
for (const type of ["pointerup", "pointercancel", "pointerleave"]) {
  view.addEventListener(type, (event) => {
    if (event.pointerId !== state.pointerId) return;
    state.drawing = false;
    state.pointerId = null;
    state.last = null;
    // Cancelled: the browser took the touch for a gesture of its own (a second finger
    // made it a pinch), so the stroke it began was not meant as paint.
    if (type === "pointercancel" && stroke.active) {
      editCtx.globalAlpha = 1;
      editCtx.drawImage(strokeBase, 0, 0);
      restoreResults(stroke.shown);
      render();
    }
    endStroke();
    if (state.cursor) showBrushPosition(); // lifted
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

// The image pixel under the brush's centre: the one the display position falls in (rounded,
// the last display pixel of a square image, 63.875 of 64, was pixel 64, on the bars), on
// the map (a captured pointer can be dragged past its edge).
function showBrushPosition() {
  const c = state.cursor;
  const cx = Math.min(view.width - 1, Math.max(0, c.x));
  const cy = Math.min(view.height - 1, Math.max(0, c.y));
  const x = Math.floor(cx / state.scale + state.extent.x0);
  const y = Math.floor(cy / state.scale + state.extent.y0);
  const w = state.bitmap.naturalWidth;
  const h = state.bitmap.naturalHeight;
  const onBars = x < 0 || y < 0 || x >= w || y >= h;
  $("brush-position").textContent =
    `Brush at ${x}, ${y} (image pixels${onBars ? ", on the letterbox bars" : ""}), ` +
    `${state.penDown || state.drawing ? "painting" : "lifted"}.`;
}

view.addEventListener("keydown", (event) => {
  // state.file and the cursor are set only once an image and its map are fully shown; while
  // a pointer draws, its stroke is the only one (a key would split it in two).
  if (!state.file || !state.cursor || state.drawing) return;
  if (event.altKey || event.ctrlKey || event.metaKey) return;
  const from = state.cursor;
  if (event.key in KEY_MOVES) {
    const [dx, dy] = KEY_MOVES[event.key];
    const step = KEY_STEP * (event.shiftKey ? 4 : 1);
    state.cursor = {
      x: Math.min(view.width - 1, Math.max(0, from.x + dx * step)),
      y: Math.min(view.height - 1, Math.max(0, from.y + dy * step)),
    };
    if (state.penDown) strokeTo(from, state.cursor);
    else render();
  } else if ((event.key === " " || event.key === "Enter") && event.repeat) {
    event.preventDefault(); // a held key toggles or dabs once, not at the key-repeat rate
    return;
  } else if (event.key === " ") {
    state.penDown = !state.penDown;
    if (state.penDown) {
      beginStroke();
      strokeTo(null, from);
    } else {
      endStroke();
      render();
    }
  } else if (event.key === "Enter") {
    if (state.penDown) {
      strokeTo(null, from); // part of the stroke under way
    } else {
      beginStroke();
      strokeTo(null, from);
      endStroke();
    }
  } else if (event.key === "Escape") {
    state.penDown = false;
    endStroke();
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
  if (!state.drawing) endStroke();
  render();
  if (state.cursor) showBrushPosition();
});

// The edited map as a PNG of the map's extent: the server reads a mask of the map's shape
// on the map's grid, so an unedited map goes back as the model's own.
function maskBlob() {
  return new Promise((resolve) => edit.toBlob(resolve, "image/png"));
}

// The answer to the map as it is now, and whether the map is still that one when the answer
// comes (edits are not held up while a request is out); null after an error, shown.
async function correct(save) {
  const generation = state.mapGeneration;
  const label = $("label-select").value;
  const form = new FormData();
  form.append("image", state.file, state.file.name || "image");
  form.append("mask", await maskBlob(), "mask.png"); // the canvas as it is at this call
  if (save) {
    form.append("label", label);
    form.append("save", "true");
  }
  const response = await send("attention/correct", {
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
  const body = await jsonBody(response);
  const current = generation === state.mapGeneration;
  showClass($("original-class"), body.original);
  if (current) showClass($("corrected-class"), body.corrected);
  else $("corrected-class").textContent = "– (map changed: classify again)";
  // The answer to "Classify with my map", in view when it comes (on a 1366 x 768 screen
  // it lay below the window); as little scrolling as that takes. Not for a save (its
  // line is beside the button clicked) nor an answer out of date (the user is editing).
  if (current && !save) {
    $("corrected-class").closest(".result").scrollIntoView({ block: "nearest" });
  }
  // An answer replaces whatever error an earlier request left in the status line (a save
  // never wrote it, so a 401 stayed next to "Saved teacher map"), and a classification
  // clears an earlier save's error (that save stored nothing; the record saved, if any,
  // is kept on show).
  setStatus(
    current
      ? `Done (feature cache ${body.feature_cache}).`
      : "Done, but for the map before your last edit: classify again."
  );
  if (!save && $("save-status").dataset.feedbackId === undefined) clearSaveStatus();
  return { body, current, generation, label };
}

// One request at a time from the buttons: a double click sends once, saves one record.
// The control that started it is disabled meanwhile, which drops the keyboard focus to the
// page's body (the browser does not give it back): it goes back to that control when the
// request ends, or, if the control stays disabled (Save after a save), to the true-class
// list beside it; unless the user has put the focus somewhere else meanwhile.
async function whileBusy(work) {
  if (state.busy) return;
  const focused = document.activeElement;
  state.busy = true;
  updateButtons();
  try {
    await work();
  } finally {
    state.busy = false;
    updateButtons();
    restoreFocus(focused);
  }
}

function restoreFocus(focused) {
  const now = document.activeElement;
  if (!focused || focused === document.body || (now && now !== document.body)) return;
  let target = focused;
  if (focused.disabled) target = focused === $("save") ? $("label-select") : null;
  if (target && !target.disabled) target.focus({ preventScroll: true });
}

$("image-input").addEventListener("change", (event) => {
  const file = event.target.files[0];
  // Emptied, so that choosing the same file again (say after typing the API key) is a
  // change too; the file shown is named next to the image instead.
  event.target.value = "";
  if (file) {
    whileBusy(() => classify(file)).catch((err) => setStatus(`Error: ${err.message}`));
  }
});
$("opacity").addEventListener("input", render);
$("clear-map").addEventListener("click", () => {
  endStroke();
  editCtx.globalCompositeOperation = "source-over";
  editCtx.globalAlpha = 1;
  editCtx.fillStyle = "#000";
  editCtx.fillRect(0, 0, edit.width, edit.height);
  mapChanged();
  render();
  setStatus("Empty map: paint where the classifier should look.");
});
$("reset-map").addEventListener("click", () => {
  drawModelMap();
  mapChanged();
  render();
  setStatus("The model's own map again: edit it with the brush, then classify.");
});
$("submit").addEventListener("click", () =>
  whileBusy(async () => {
    setStatus("Classifying with your map…");
    clearResult("corrected-class");
    await correct(false);
  }).catch((err) => setStatus(`Error: ${err.message}`))
);
$("save").addEventListener("click", () =>
  whileBusy(async () => {
    $("save-status").textContent = "Saving…";
    delete $("save-status").dataset.feedbackId;
    const answer = await correct(true);
    if (answer) {
      state.saved = { generation: answer.generation, label: answer.label };
      const id = answer.body.feedback_id;
      $("save-status").textContent = answer.current
        ? `Saved teacher map ${id}. To save another, edit the map or pick another class.`
        : `Saved teacher map ${id}: the map as it was before your last edit.`;
      $("save-status").dataset.feedbackId = id;
    }
  }).catch((err) => {
    $("save-status").textContent = `Error: ${err.message}`;
  })
);
$("label-select").addEventListener("change", updateButtons);

// The true-class list, from the attention model's labels in GET /models, with an empty
// first entry: saving waits for the user's own choice.
const RETRIED = "saving needs one; it is asked for again with the next image.";
// Whether the last try failed (the list may still hold an earlier one): the next image
// asks again, and the message goes once the list comes.
let labelsWanted = true;

// Each key check's number: an answer to an older check (a key typed over since) is dropped,
// or a slow refusal of the old key would say the new, valid one is not accepted.
let labelsAsked = 0;

async function loadLabels() {
  const keyStatus = $("key-status");
  const labelsStatus = $("labels-status");
  const typed = $("api-key").value.trim() !== "";
  const asked = ++labelsAsked;
  labelsWanted = true;
  try {
    const response = await send("models", { headers: headers() });
    if (asked !== labelsAsked) return;
    if (response.status === 401) {
      keyStatus.textContent = typed
        ? "This API key is not accepted."
        : "This server needs an API key: enter it above.";
      return;
    }
    keyStatus.textContent = "";
    if (!response.ok) {
      labelsStatus.textContent = `No class list (${await problemText(response)}): ${RETRIED}`;
      return;
    }
    if (statusAsksForKey) setStatus("The API key is accepted: try again.");
    const body = await jsonBody(response);
    if (asked !== labelsAsked) return;
    const model = body.models.find(
      (m) => m.task === "attention_classification" || m.name === "attention"
    );
    if (!model) {
      labelsStatus.textContent = `No class list (the attention model is not listed): ${RETRIED}`;
      return;
    }
    labelsStatus.textContent = "";
    const select = $("label-select");
    const chosen = select.value;
    select.replaceChildren(
      new Option("(choose the true class)", ""),
      ...model.labels.map((label) => new Option(label.replaceAll("_", " "), label))
    );
    if (model.labels.includes(chosen)) select.value = chosen;
    labelsWanted = false;
  } catch (err) {
    if (asked !== labelsAsked) return;
    // The labels only fill the save box; the editor works without them. A key the
    // browser cannot send is worth naming.
    if (err.message.startsWith("the API key")) keyStatus.textContent = `Error: ${err.message}.`;
    else labelsStatus.textContent = `No class list (${err.message}): ${RETRIED}`;
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
