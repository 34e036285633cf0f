"""The attention editor in a real browser (Debian's chromium driven by Playwright):
upload a two-item canvas, wipe the map, paint attention over item B with the brush,
submit, read the corrected class, save it as a teacher map."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from PIL import Image

from models.attention.data import FASHION_MNIST_DIR, LABELS, compose, load_fashion_mnist
from service.feedback import open_store
from service.main import create_app
from tests.service.conftest import make_settings

CHROMIUM = Path("/usr/bin/chromium")
REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SIDE = 256  # upload side; the page shows it at 512 px

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists() or shutil.which("chromium") is None,
        reason="Debian's chromium is not installed (.ci/run installs it)",
    ),
    pytest.mark.skipif(
        not (REPOSITORY / "attention").is_dir(), reason="no committed attention model"
    ),
    pytest.mark.skipif(
        not FASHION_MNIST_DIR.exists(),
        reason="Debian package dataset-fashion-mnist not installed (.ci/run installs it)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    feedback = tmp_path_factory.mktemp("ui") / "feedback.sqlite3"
    settings = make_settings(REPOSITORY, models=["attention"], feedback_db=feedback)
    port = _free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", feedback
    uv.should_exit = True
    thread.join(timeout=10)


@contextmanager
def editor_page(url: str) -> Iterator[Any]:
    """The editor page of the server at ``url``, open in a fresh headless Chromium; on a
    clean exit, no Content-Security-Policy violation was reported (the page's own CSP)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            violations: list[str] = []
            page.on(
                "console",
                lambda message: (
                    violations.append(message.text)
                    if "Content Security Policy" in message.text
                    else None
                ),
            )
            page.goto(url + "/ui")
            yield page
            assert not violations, violations
        finally:
            browser.close()


def _canvas(tmp_path: Path) -> tuple[Path, int, tuple[float, float, float, float]]:
    """A two-item test canvas where a box mask on item B is known to give B (checked
    through the API below); returns its file, B's class and B's box in upload pixels."""
    items, labels = load_fashion_mnist("test")
    c = compose(items, labels, "test", 1, kind="pair", seed=77)
    path = tmp_path / "two_items.png"
    Image.fromarray(c.images[0]).resize((SIDE, SIDE), Image.Resampling.BILINEAR).save(path)
    scale = SIDE / 64
    x0, y0, x1, y1 = (float(v) * scale for v in c.boxes[0, 1])
    return path, int(c.labels[0, 1]), (x0, y0, x1, y1)


def test_upload_brush_submit_and_save(server: tuple[str, Path], tmp_path: Path) -> None:
    url, feedback = server
    image_path, label_b, (x0, y0, x1, y1) = _canvas(tmp_path)

    # The same correction through the API with a box mask: the model answers B there.
    import httpx

    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[int(y0) : int(y1), int(x0) : int(x1)] = 255
    mask_path = tmp_path / "mask.png"
    Image.fromarray(mask, "L").save(mask_path)
    with image_path.open("rb") as im, mask_path.open("rb") as mk:
        api = httpx.post(
            url + "/attention/correct",
            files={"image": ("i.png", im, "image/png"), "mask": ("m.png", mk, "image/png")},
            timeout=30,
        ).json()
    assert api["corrected"]["class_id"] == label_b, "pick a canvas the model can correct"

    with editor_page(url) as page:
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        assert page.get_attribute("#original-class", "data-label") in LABELS
        # Draw from scratch: an empty map, then paint over item B only.
        page.click("#clear-map")
        page.check('input[name="brush-mode"][value="add"]')
        page.fill("#brush-size", "40")
        page.dispatch_event("#brush-size", "input")
        box = page.locator("#view").bounding_box()
        assert box is not None
        k = box["width"] / SIDE  # CSS pixels per upload pixel
        page.mouse.move(box["x"] + (x0 + 8) * k, box["y"] + (y0 + 8) * k)
        page.mouse.down()
        rows = np.linspace(y0 + 8, y1 - 8, 6)
        for i, row in enumerate(rows):
            xs = (x0 + 8, x1 - 8) if i % 2 == 0 else (x1 - 8, x0 + 8)
            for x in np.linspace(*xs, 8):
                page.mouse.move(box["x"] + x * k, box["y"] + row * k)
        page.mouse.up()
        page.click("#submit")
        page.wait_for_selector("#corrected-class[data-class-id]", timeout=20_000)
        corrected = int(page.get_attribute("#corrected-class", "data-class-id") or -1)
        assert corrected == label_b
        shown = LABELS[label_b].replace("_", " ")  # as the true-class list names it
        assert shown in page.locator("#corrected-class").inner_text()
        # Save it as a teacher map with the true label.
        page.select_option("#label-select", LABELS[label_b])
        page.click("#save")
        page.wait_for_selector("#save-status[data-feedback-id]", timeout=20_000)
        feedback_id = page.get_attribute("#save-status", "data-feedback-id")
    (record,) = [r for r in open_store(feedback).records() if r.id == feedback_id]
    assert record.label == LABELS[label_b]
    edited = np.asarray(Image.open(io.BytesIO(record.edited_map)), np.float32)
    # The painted attention lies on item B's side of the canvas.
    grid = 16 / SIDE
    inside = edited[
        int(y0 * grid) : int(np.ceil(y1 * grid)), int(x0 * grid) : int(np.ceil(x1 * grid))
    ]
    assert inside.sum() > 0.9 * edited.sum() > 0


# What the edited map holds: the sum of its grey (red channel) values over a rectangle of
# display pixels [x, y, width, height], from the page's own edit canvas.
EDITED_SUM = (
    "([x, y, w, h]) => editCtx.getImageData(x, y, w, h).data"
    ".reduce((sum, v, i) => (i % 4 === 0 ? sum + v : sum), 0)"
)


def test_the_same_correction_from_the_keyboard_alone(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    """Arrow keys, Space, Enter and Escape paint the map as the pointer does: a lifted
    brush and its outline leave the map alone, Enter dabs, Space puts the brush down and
    strokes follow the arrows, Escape lifts it; painted over item B (and nowhere else), the
    model answers B, as with the mouse above."""
    url, _ = server
    image_path, label_b, (x0, y0, x1, y1) = _canvas(tmp_path)
    with editor_page(url) as page:
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        page.focus("#clear-map")
        page.keyboard.press("Enter")
        page.fill("#brush-size", "40")
        page.dispatch_event("#brush-size", "input")
        page.focus("#view")
        width = page.evaluate("document.querySelector('#view').width")
        k, step = width / SIDE, 8  # display pixels per upload pixel; editor.js KEY_STEP
        x = y = width / 2  # the brush starts at the centre
        # To item B's top-left corner (inside by 8 upload pixels), brush lifted.
        right, down = round(((x0 + 8) * k - x) / step), round(((y0 + 8) * k - y) / step)
        moves = [("ArrowRight" if right > 0 else "ArrowLeft")] * abs(right)
        moves += [("ArrowDown" if down > 0 else "ArrowUp")] * abs(down)
        for key in moves:
            page.keyboard.press(key)
        whole = [0, 0, width, width]
        assert page.evaluate(EDITED_SUM, whole) == 0  # moved lifted: nothing painted
        x, y = x + right * step, y + down * step
        shown = page.inner_text("#brush-position")
        assert f"Brush at {round(x / k)}, {round(y / k)} (image pixels), lifted" in shown
        page.keyboard.press("Enter")  # one dab where the brush is
        assert page.evaluate(EDITED_SUM, whole) > 0
        page.keyboard.press("Space")  # down: paints where it moves
        across = int(((x1 - x0 - 16) * k) // step)
        rows = int(((y1 - y0 - 16) * k) // (3 * step))
        for row in range(rows + 1):
            key = "ArrowRight" if row % 2 == 0 else "ArrowLeft"
            for _ in range(across):
                page.keyboard.press(key)
            if row < rows:
                for _ in range(3):
                    page.keyboard.press("ArrowDown")
        assert "painting" in page.inner_text("#brush-position")
        page.keyboard.press("Escape")  # lifted again
        assert "lifted" in page.inner_text("#brush-position")
        box = [round(x0 * k), round(y0 * k), round((x1 - x0) * k), round((y1 - y0) * k)]
        assert page.evaluate(EDITED_SUM, box) > 0.9 * page.evaluate(EDITED_SUM, whole) > 0
        page.focus("#submit")
        page.keyboard.press("Enter")
        page.wait_for_selector("#corrected-class[data-class-id]", timeout=20_000)
        assert int(page.get_attribute("#corrected-class", "data-class-id") or -1) == label_b


def test_chosen_label_double_clicks_and_an_image_the_browser_cannot_show(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    """The editor keeps a true class the user picked, saves once per double click, and
    leaves nothing editable after an upload it cannot display (the server reads TIFF,
    Chromium does not show it: the old page sent it and let the previous image's edit be
    saved under it)."""
    url, feedback = server
    image_path, _, _ = _canvas(tmp_path)
    tiff = tmp_path / "photo.tiff"
    Image.open(image_path).save(tiff)
    with editor_page(url) as page:
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        predicted = page.get_attribute("#original-class", "data-label")
        chosen = next(label for label in LABELS if label != predicted)
        page.select_option("#label-select", chosen)
        page.click("#submit")
        page.wait_for_selector("#corrected-class[data-class-id]", timeout=20_000)
        assert page.input_value("#label-select") == chosen  # not the model's answer

        before = len(open_store(feedback).records())
        page.dblclick("#save")
        page.wait_for_selector("#save-status[data-feedback-id]", timeout=20_000)
        # Locator assertions, not wait_for_function: a string predicate is eval'd in the
        # page, which the page's CSP (no 'unsafe-eval') refuses.
        expect = pytest.importorskip("playwright.sync_api").expect
        expect(page.locator("#save")).to_be_enabled(timeout=20_000)
        saved = open_store(feedback).records()
        assert len(saved) == before + 1
        assert saved[-1].label == chosen

        sent = requests.count(url + "/attention")
        page.set_input_files("#image-input", str(tiff))
        expect(page.locator("#status")).to_contain_text("cannot display", timeout=20_000)
        assert requests.count(url + "/attention") == sent  # never sent
        for button in ("#clear-map", "#reset-map", "#submit", "#save"):
            assert page.is_disabled(button), button
        assert page.inner_text("#original-class") == "\u2013"  # the page's en dash
        # The same good file again, right after: a change even with the same name.
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        assert not page.is_disabled("#save")


def test_the_page_says_how_much_attention_lies_on_the_letterbox_bars(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    """A wide photo: the share of the model's map beyond the photo, computed here from the
    API's map and extent, is the one the page reports."""
    import base64

    import httpx

    url, _ = server
    rng = np.random.default_rng(3)
    wide = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 255, (160, 400, 3), dtype=np.uint8)).save(wide)
    body = httpx.post(
        url + "/attention", files={"image": ("w.png", wide.read_bytes(), "image/png")}, timeout=30
    ).json()
    cells = np.asarray(
        Image.open(io.BytesIO(base64.b64decode(body["attention_map"]["png_base64"]))), np.float64
    )
    e = body["attention_map"]["extent"]
    rows, cols = cells.shape
    ys = e["y0"] + (np.arange(rows) + 0.5) * (e["y1"] - e["y0"]) / rows
    xs = e["x0"] + (np.arange(cols) + 0.5) * (e["x1"] - e["x0"]) / cols
    inside = ((ys >= 0) & (ys < 160))[:, None] & ((xs >= 0) & (xs < 400))[None, :]
    share = cells[~inside].sum() / cells.sum()
    with editor_page(url) as page:
        page.set_input_files("#image-input", str(wide))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        status = page.inner_text("#status")
    assert 0.05 <= share < 1  # this wide image's bars hold a good part of the map
    assert f"{round(100 * share)} % of the model's attention lies on the bars" in status
