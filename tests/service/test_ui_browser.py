"""The attention editor in a real browser (Debian's chromium driven by Playwright):
upload a two-item canvas, wipe the map, paint attention over item B with the brush,
submit, read the corrected class, save it as a teacher map."""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
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
def editor_page(
    url: str, *, has_touch: bool = False, prefix: str = "", routed: list[str] | None = None
) -> Iterator[Any]:
    """The editor page of the server at ``url``, open in a fresh headless Chromium; on a
    clean exit, no Content-Security-Policy violation was reported (the page's own CSP).

    With a ``prefix`` the page is opened at ``url + prefix + "/ui"`` and every request
    under the prefix reaches the server without it, as through a reverse proxy that
    serves the API under a path; ``routed`` collects the paths it forwarded."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000}, has_touch=has_touch)
            if prefix:

                def strip_prefix(route: Any) -> None:
                    if routed is not None:
                        routed.append(route.request.url[len(url) :])
                    target = route.request.url.replace(url + prefix, url, 1)
                    if route.request.method != "GET":  # bodies go through as they are
                        route.continue_(url=target)
                        return
                    # Fetched here and answered to the browser's own request, as a proxy
                    # does: a redirect's relative Location then resolves against the
                    # prefixed URL the browser asked for.
                    route.fulfill(response=route.fetch(url=target, max_redirects=0))

                page.route(url + prefix + "/**", strip_prefix)
            violations: list[str] = []
            page.on(
                "console",
                lambda message: (
                    violations.append(message.text)
                    if "Content Security Policy" in message.text
                    else None
                ),
            )
            page.goto(url + prefix + "/ui")
            yield page
            assert not violations, violations
        finally:
            browser.close()


def answer_problem(
    status: int, title: str, detail: str, retry_after: str | None = None
) -> Callable[[Any], None]:
    """A Playwright route handler that answers a problem+json error, as the service does."""
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    headers = {"Retry-After": retry_after} if retry_after else {}

    def fulfil(route: Any) -> None:
        route.fulfill(
            status=status, headers=headers, content_type="application/problem+json", body=body
        )

    return fulfil


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
    """Saving waits for a true class the user picked (the page used to preselect the
    model's answer, so one click stored the model's guess as the truth), keeps it, saves
    once per double click, marks the answer and the save out of date once the map changes,
    and leaves nothing editable after an upload it cannot display (the server reads TIFF,
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
        assert page.input_value("#label-select") == ""
        assert page.is_disabled("#save")
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
        expect(page.locator("#image-input")).to_be_enabled(timeout=20_000)
        expect(page.locator("#save")).to_be_disabled()  # until the map or the class changes
        saved = open_store(feedback).records()
        assert len(saved) == before + 1
        assert saved[-1].label == chosen
        # An edit makes the answer with the map and the saved record shown out of date.
        page.focus("#view")
        page.keyboard.press("Enter")
        assert "map changed" in page.inner_text("#corrected-class")
        assert page.get_attribute("#corrected-class", "data-class-id") is None
        assert page.inner_text("#save-status") == ""
        expect(page.locator("#save")).to_be_enabled()

        sent = requests.count(url + "/attention")
        page.set_input_files("#image-input", str(tiff))
        expect(page.locator("#status")).to_contain_text("cannot show", timeout=20_000)
        assert requests.count(url + "/attention") == sent  # never sent
        for button in ("#clear-map", "#reset-map", "#submit", "#save"):
            assert page.is_disabled(button), button
        assert page.inner_text("#original-class") == "\u2013"  # the page's en dash
        # The same good file again, right after: a change even with the same name.
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        assert page.input_value("#label-select") == "" and page.is_disabled("#save")
        page.select_option("#label-select", chosen)
        assert not page.is_disabled("#save")


def test_a_wide_photo_is_edited_on_the_models_whole_square(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    """For a non-square photo the editable map is the model's square input, bars included:
    sent back unedited it gives the model's own answer (the page used to crop the map to
    the photo, which moved a wide photo's answer with no edit at all), and the bars can be
    painted."""
    url, _ = server
    rng = np.random.default_rng(3)
    wide = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 255, (160, 400, 3), dtype=np.uint8)).save(wide)
    with editor_page(url) as page:
        page.set_input_files("#image-input", str(wide))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        assert "grey bars mark the letterbox" in page.inner_text("#status")
        size = page.evaluate("[edit.width, edit.height, view.width, view.height]")
        assert size == [512, 512, 512, 512]  # the map's square, not the 512 x 205 photo
        # How much of the model's own map lies on the bars (above and below the photo):
        # enough that cropping it away would show.
        bars = page.evaluate(EDITED_SUM, [0, 0, 512, 150]) + page.evaluate(
            EDITED_SUM, [0, 362, 512, 150]
        )
        assert bars > 0.05 * page.evaluate(EDITED_SUM, [0, 0, 512, 512])
        with page.expect_response(lambda r: r.url.endswith("/attention/correct")) as answer:
            page.click("#submit")
        body = answer.value.json()
        assert body["corrected"]["class_id"] == body["original"]["class_id"]
        assert abs(body["corrected"]["score"] - body["original"]["score"]) < 0.01
        # The bars are part of the map: a dab there paints, and the brush says where it is.
        page.click("#clear-map")
        page.focus("#view")
        for _ in range(30):
            page.keyboard.press("ArrowUp")  # from the centre to the top bar
        page.keyboard.press("Enter")
        assert "on the letterbox bars" in page.inner_text("#brush-position")
        assert page.evaluate(EDITED_SUM, [0, 0, 512, 150]) > 0


# The grey of the edited map at display pixels [[x, y], ...], from the page's edit canvas.
GREY_AT = "(points) => points.map(([x, y]) => editCtx.getImageData(x, y, 1, 1).data[0])"


def test_brush_strength_holds_however_the_stroke_is_drawn(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    """At 20 % strength on an empty map every stroke paints grey 51 (20 % of 255): a dab, a
    slow drag whose segments overlap, a fast one, a keyboard stroke. The page used to lay
    each segment over the last, so a slow drag painted 244 and a fast one beads of 51-91."""
    url, _ = server
    image_path, _, _ = _canvas(tmp_path)
    with editor_page(url) as page:
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        page.click("#clear-map")
        page.fill("#brush-strength", "20")
        box = page.locator("#view").bounding_box()
        assert box is not None
        k = box["width"] / page.evaluate("view.width")  # CSS pixels per display pixel

        def drag(y: float, steps: int) -> None:
            page.mouse.move(box["x"] + 100 * k, box["y"] + y * k)
            page.mouse.down()
            page.mouse.move(box["x"] + 400 * k, box["y"] + y * k, steps=steps)
            page.mouse.up()

        page.mouse.click(box["x"] + 60 * k, box["y"] + 60 * k)
        drag(200, 150)
        # Keys while the mouse draws (the click focused the map) do not split its stroke.
        page.mouse.move(box["x"] + 100 * k, box["y"] + 120 * k)
        page.mouse.down()
        page.mouse.move(box["x"] + 250 * k, box["y"] + 120 * k, steps=30)
        for key in ("Enter", "Space", "Escape"):
            page.keyboard.press(key)
        page.mouse.move(box["x"] + 400 * k, box["y"] + 120 * k, steps=30)
        page.mouse.up()
        drag(300, 3)
        page.focus("#view")
        page.evaluate("state.cursor = {x: 100, y: 420}")
        page.keyboard.press("Space")
        for _ in range(30):
            page.keyboard.press("ArrowRight")
        page.keyboard.press("Space")
        points = [[60, 60]] + [[x, y] for y in (120, 200, 300, 420) for x in (150, 200, 250, 300)]
        greys = page.evaluate(GREY_AT, points)
        assert all(abs(g - 51) <= 2 for g in greys), list(zip(points, greys, strict=True))
        # A second stroke over the first adds to it, as a second coat does.
        drag(200, 20)
        (twice,) = page.evaluate(GREY_AT, [[250, 200]])
        assert abs(twice - (51 + 0.2 * (255 - 51))) <= 3


def test_one_finger_paints_and_two_fingers_do_not(server: tuple[str, Path], tmp_path: Path) -> None:
    """A one-finger stroke paints; two fingers on the map are the browser's pinch gesture,
    which leaves the map as it was: no band from one finger to the other (the page used to
    take every pointer's moves as one stroke) and no dab where the first one landed."""
    url, _ = server
    image_path, _, _ = _canvas(tmp_path)
    with editor_page(url, has_touch=True) as page:
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        page.click("#clear-map")
        page.fill("#brush-size", "10")
        box = page.locator("#view").bounding_box()
        assert box is not None
        k = box["width"] / page.evaluate("view.width")
        cdp = page.context.new_cdp_session(page)

        def touch(kind: str, points: list[tuple[float, float]]) -> None:
            cdp.send(
                "Input.dispatchTouchEvent",
                {
                    "type": kind,
                    "touchPoints": [
                        {"x": box["x"] + x * k, "y": box["y"] + y * k, "id": i}
                        for i, (x, y) in enumerate(points)
                    ],
                },
            )

        touch("touchStart", [(100, 100)])
        for step in range(1, 6):
            touch("touchMove", [(100 + 10 * step, 100)])
        touch("touchEnd", [])
        assert page.evaluate(GREY_AT, [[100, 100], [130, 100]]) == [255, 255]
        page.click("#submit")
        page.wait_for_selector("#corrected-class[data-class-id]", timeout=20_000)
        answer = page.inner_text("#corrected-class")
        touch("touchStart", [(100, 300)])
        touch("touchStart", [(100, 300), (400, 400)])
        for step in range(1, 6):
            touch("touchMove", [(100 + 10 * step, 300), (400 - 10 * step, 400)])
        touch("touchEnd", [])
        points = [[100, 300], [130, 300], [250, 350], [370, 400]]
        assert page.evaluate(GREY_AT, points) == [0, 0, 0, 0]
        # The map is as it was, so its answer still stands.
        assert page.inner_text("#corrected-class") == answer
        assert page.get_attribute("#corrected-class", "data-class-id") is not None


def test_the_page_works_under_a_path_prefix(server: tuple[str, Path], tmp_path: Path) -> None:
    """Behind a reverse proxy that serves the service under /vision, the page loads its
    script and talks to the API under the same prefix (its URLs are relative)."""
    url, _ = server
    image_path, _, _ = _canvas(tmp_path)
    routed: list[str] = []
    with editor_page(url, prefix="/vision", routed=routed) as page:
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        expect = pytest.importorskip("playwright.sync_api").expect
        expect(page.locator("#label-select option")).not_to_have_count(0)
        page.goto(url + "/vision/ui/")  # the slash redirect keeps the prefix
        assert page.url == url + "/vision/ui"
    for path in (
        "/vision/ui",
        "/vision/ui/static/editor.js",
        "/vision/models",
        "/vision/attention",
    ):
        assert path in routed, routed


def test_on_a_phone_the_answer_is_within_a_screen_of_the_button(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    """At 360 x 740 CSS pixels the buttons follow the image and the answers follow the
    buttons, so "Classify with my map" and its answer fit on one screen (the buttons used to
    sit above the image, 920 pixels from the answer) and nothing overflows sideways."""
    url, _ = server
    image_path, _, _ = _canvas(tmp_path)
    with editor_page(url) as page:
        page.set_viewport_size({"width": 360, "height": 740})
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        page.click("#submit")
        page.wait_for_selector("#corrected-class[data-class-id]", timeout=20_000)
        button, answer, image = (
            page.locator(selector).bounding_box()
            for selector in ("#submit", "#corrected-class", "#view")
        )
        assert button is not None and answer is not None and image is not None
        assert image["y"] + image["height"] <= button["y"] < answer["y"]
        assert answer["y"] + answer["height"] - button["y"] < 740
        assert page.evaluate("document.documentElement.scrollWidth") <= 360


def test_an_answer_to_a_map_edited_meanwhile_is_shown_out_of_date(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    """The map may be edited while its answer is out: the answer, when it comes, is for the
    map before the edit and says so (it used to be shown as current)."""
    url, _ = server
    image_path, _, _ = _canvas(tmp_path)
    with editor_page(url) as page:
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        held: list[Any] = []
        page.route("**/attention/correct", lambda route: held.append(route))
        page.click("#submit")
        for _ in range(200):
            if held:
                break
            page.wait_for_timeout(50)
        assert held, "the correction was never sent"
        page.focus("#view")
        page.keyboard.press("Enter")  # a dab while the answer is out
        held[0].continue_()
        expect = pytest.importorskip("playwright.sync_api").expect
        expect(page.locator("#status")).to_contain_text("before your last edit", timeout=20_000)
        assert "map changed" in page.inner_text("#corrected-class")
        assert page.get_attribute("#corrected-class", "data-class-id") is None


def test_the_page_says_what_went_wrong(server: tuple[str, Path], tmp_path: Path) -> None:
    """Answers the page cannot use are named: /models refused for want of a key, or down (and
    asked again with the next image), a key no header can carry, an overloaded server's
    Retry-After, and a 200 that is not JSON (a proxy's page)."""
    url, _ = server
    image_path, _, _ = _canvas(tmp_path)
    expect = pytest.importorskip("playwright.sync_api").expect
    with editor_page(url) as page:
        page.route("**/models", answer_problem(401, "Unauthorized", "an API key is required"))
        page.fill("#api-key", "wrong")
        expect(page.locator("#key-status")).to_have_text("This API key is not accepted.")
        page.fill("#api-key", "")
        expect(page.locator("#key-status")).to_contain_text("needs an API key")
        page.fill("#api-key", "key\u20ac")  # past Latin-1: fetch cannot send it
        expect(page.locator("#key-status")).to_contain_text("no HTTP header can carry")
        page.fill("#api-key", "")
        page.unroute("**/models")
        page.route(
            "**/models", answer_problem(503, "Service Unavailable", "models are loading", "3")
        )
        page.reload()
        expect(page.locator("#labels-status")).to_contain_text("No class list (503")
        page.unroute("**/models")
        page.set_input_files("#image-input", str(image_path))  # the list is asked for again
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        expect(page.locator("#label-select option")).not_to_have_count(0)
        expect(page.locator("#labels-status")).to_have_text("")

        page.route(
            "**/attention",
            answer_problem(503, "Service Unavailable", "the attention queue is full", "7"),
        )
        page.set_input_files("#image-input", str(image_path))
        expect(page.locator("#status")).to_contain_text("queue is full; try again in 7 s")
        page.unroute("**/attention")
        page.route(
            "**/attention",
            lambda route: route.fulfill(status=200, content_type="text/html", body="<html>"),
        )
        page.set_input_files("#image-input", str(image_path))
        expect(page.locator("#status")).to_contain_text("text/html, not JSON")


@pytest.mark.parametrize(
    "attacker",
    [
        "http://elsewhere.test/",  # another site: Sec-Fetch-Site cross-site
        "http://127.0.0.1:8999/",  # another port of the host: same-site to the browser
    ],
)
def test_a_page_of_another_origin_cannot_change_a_server_without_keys(
    server: tuple[str, Path], attacker: str
) -> None:
    """A form on another site, or on another port of the same host, that posts to the
    service (no preflight needed) is refused 403 by a server without API keys; the same
    request from the service's own page passes."""
    url, _ = server
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    form = (
        f'<form id="f" method="post" action="{url}/models/attention/reload"></form>'
        '<script>document.getElementById("f").submit()</script>'
    )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route(
                attacker,
                lambda route: route.fulfill(status=200, content_type="text/html", body=form),
            )
            with page.expect_response(lambda r: r.url.endswith("/reload")) as answer:
                page.goto(attacker)
            assert answer.value.status == 403
            assert "VISION_API_KEYS" in answer.value.json()["detail"]
            # The page's own script may (its CSP allows no form submission at all).
            page.goto(url + "/ui")
            status = page.evaluate(
                "async (action) => (await fetch(action, {method: 'POST'})).status",
                url + "/models/attention/reload",
            )
            assert status == 200
        finally:
            browser.close()


def test_a_page_rebound_to_the_server_cannot_change_it(server: tuple[str, Path]) -> None:
    """DNS rebinding: the browser resolves rebound.test to the server (Chromium's resolver
    rules stand in for the attacker's DNS), so the page is same-origin to it and its fetch
    reaches the server, which refuses the change by the Host it names."""
    url, _ = server
    port = url.rsplit(":", 1)[1]
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    args = [*CHROMIUM_ARGS, "--host-resolver-rules=MAP rebound.test 127.0.0.1"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page()
            page.goto(f"http://rebound.test:{port}/ui")  # the server's own page, rebound
            answer = page.evaluate(
                "async () => { const r = await fetch('/models/attention/reload', "
                "{method: 'POST'}); return [r.status, (await r.json()).detail]; }"
            )
            assert answer[0] == 403 and "VISION_ALLOWED_HOSTS" in answer[1]
            # Reads stay open (they show counts and model names only).
            status = page.evaluate("async () => (await fetch('/models')).status")
            assert status == 200
        finally:
            browser.close()


FOCUSED = "document.activeElement.id || document.activeElement.tagName"


def test_the_keyboard_focus_stays_on_the_control_used(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    """A control is disabled while its request is out, which dropped the focus to the page's
    body for good after every upload, classification and save (Enter then did nothing):
    it comes back to the control when the answer does."""
    url, _ = server
    image_path, _, _ = _canvas(tmp_path)
    expect = pytest.importorskip("playwright.sync_api").expect
    with editor_page(url) as page:
        # (Chosen with the input focused, as after Enter on it; the file chooser that Enter
        # opens did not always open in time in a busy headless Chromium.)
        page.focus("#image-input")
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        expect(page.locator("#image-input")).to_be_enabled()
        assert page.evaluate(FOCUSED) == "image-input"
        page.focus("#submit")
        page.keyboard.press("Enter")
        page.wait_for_selector("#corrected-class[data-class-id]", timeout=20_000)
        expect(page.locator("#submit")).to_be_enabled()
        assert page.evaluate(FOCUSED) == "submit"
        # The focus is really there: Enter classifies again.
        with page.expect_response(lambda r: r.url.endswith("/attention/correct")):
            page.keyboard.press("Enter")
        expect(page.locator("#submit")).to_be_enabled(timeout=20_000)
        assert page.evaluate(FOCUSED) == "submit"
        page.select_option("#label-select", LABELS[0])
        page.focus("#save")
        page.keyboard.press("Enter")
        page.wait_for_selector("#save-status[data-feedback-id]", timeout=20_000)
        expect(page.locator("#image-input")).to_be_enabled()
        # Save waits for a change now: the focus goes to the true class beside it.
        expect(page.locator("#save")).to_be_disabled()
        assert page.evaluate(FOCUSED) == "label-select"
        # Focus the user moved meanwhile stays where the user put it.
        held: list[Any] = []
        page.route("**/attention/correct", lambda route: held.append(route))
        page.focus("#submit")
        page.keyboard.press("Enter")
        for _ in range(200):
            if held:
                break
            page.wait_for_timeout(50)
        assert held, "the correction was never sent"
        page.focus("#view")
        held[0].continue_()
        expect(page.locator("#submit")).to_be_enabled(timeout=20_000)
        assert page.evaluate(FOCUSED) == "view"


def test_a_success_replaces_an_earlier_error(server: tuple[str, Path], tmp_path: Path) -> None:
    """A failed classification's error stayed in the status line under the image after a
    later save worked ("Error: 401 ..." next to "Saved teacher map ..."): saving never
    wrote it. Every answer now replaces it, and a classification that works clears an
    earlier save's error."""
    url, _ = server
    image_path, _, _ = _canvas(tmp_path)
    expect = pytest.importorskip("playwright.sync_api").expect
    refuse = answer_problem(401, "Unauthorized", "the API key is not valid")
    with editor_page(url) as page:
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        page.select_option("#label-select", LABELS[1])
        page.route("**/attention/correct", refuse)
        page.click("#submit")
        expect(page.locator("#status")).to_contain_text("Error: 401")
        page.unroute("**/attention/correct")
        page.click("#save")
        page.wait_for_selector("#save-status[data-feedback-id]", timeout=20_000)
        expect(page.locator("#status")).not_to_contain_text("Error")
        # A key no header can carry, then fixed: the same.
        page.fill("#api-key", "key\u20ac")
        page.click("#submit")
        expect(page.locator("#status")).to_contain_text("no HTTP header can carry")
        page.fill("#api-key", "")
        page.select_option("#label-select", LABELS[2])
        page.click("#save")
        page.wait_for_selector("#save-status[data-feedback-id]", timeout=20_000)
        expect(page.locator("#status")).not_to_contain_text("Error")
        # A failed save's error goes once a classification works.
        page.select_option("#label-select", LABELS[3])
        page.route("**/attention/correct", refuse)
        page.click("#save")
        expect(page.locator("#save-status")).to_contain_text("Error: 401")
        page.unroute("**/attention/correct")
        page.click("#submit")
        page.wait_for_selector("#corrected-class[data-class-id]", timeout=20_000)
        expect(page.locator("#save-status")).to_have_text("")


def test_back_to_the_models_map_says_so(server: tuple[str, Path], tmp_path: Path) -> None:
    """The "Back to the model's map" button brought the map back but left "Empty map: ..."
    from "Draw from scratch" in the status line."""
    url, _ = server
    image_path, _, _ = _canvas(tmp_path)
    expect = pytest.importorskip("playwright.sync_api").expect
    with editor_page(url) as page:
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        model_map = page.evaluate(EDITED_SUM, [0, 0, 512, 512])
        page.click("#clear-map")
        expect(page.locator("#status")).to_contain_text("Empty map")
        assert page.evaluate(EDITED_SUM, [0, 0, 512, 512]) == 0
        page.click("#reset-map")
        assert page.evaluate(EDITED_SUM, [0, 0, 512, 512]) == model_map > 0
        expect(page.locator("#status")).to_contain_text("The model's own map")
        expect(page.locator("#status")).not_to_contain_text("Empty")


def test_a_class_list_that_failed_is_asked_for_with_the_next_image(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    """A class list that could not be refreshed (the server down as the key was typed) said
    "it is asked for again with the next image", but the next image asked again only when
    the list was empty: with the earlier list still there, the message stayed for good."""
    url, _ = server
    image_path, _, _ = _canvas(tmp_path)
    expect = pytest.importorskip("playwright.sync_api").expect
    with editor_page(url) as page:
        expect(page.locator("#label-select option")).not_to_have_count(0)
        page.route("**/models", lambda route: route.abort())
        page.fill("#api-key", " ")  # typing asks for the list again (a blank key is none)
        expect(page.locator("#labels-status")).to_contain_text("asked for again")
        page.unroute("**/models")
        with page.expect_request(lambda r: r.url.endswith("/models"), timeout=20_000):
            page.set_input_files("#image-input", str(image_path))
        expect(page.locator("#labels-status")).to_have_text("")
        # Once the list is there, the next image does not ask again.
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url) if r.url.endswith("/models") else None)
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        expect(page.locator("#image-input")).to_be_enabled()
        assert asked == []


def test_the_brush_position_is_where_the_brush_is(server: tuple[str, Path], tmp_path: Path) -> None:
    """The position line rounded display to image pixels, so the right and bottom edge of a
    square image (display pixel 511 of 512: image pixel 255.5 of 256) read as pixel 256,
    "on the letterbox bars"; and after a click or a stroke it kept the keyboard brush's old
    position (the click focused the map before it moved the brush there)."""
    url, _ = server
    image_path, _, _ = _canvas(tmp_path)  # SIDE x SIDE, no letterbox
    with editor_page(url) as page:
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        page.focus("#view")
        for _ in range(40):
            page.keyboard.press("ArrowRight")
        for _ in range(40):
            page.keyboard.press("ArrowDown")
        last = SIDE - 1
        assert (
            page.inner_text("#brush-position") == f"Brush at {last}, {last} (image pixels), lifted."
        )
        box = page.locator("#view").bounding_box()
        assert box is not None
        k = box["width"] / page.evaluate("view.width")  # CSS pixels per display pixel
        scale = page.evaluate("view.width") / SIDE  # display pixels per image pixel
        # Display pixels at the middle of image pixels (a rounding of the mouse's position
        # by half a CSS pixel stays in the same image pixel).
        page.mouse.click(box["x"] + 10.5 * scale * k, box["y"] + 20.5 * scale * k)
        assert page.inner_text("#brush-position") == "Brush at 10, 20 (image pixels), lifted."
        page.mouse.down()
        page.mouse.move(box["x"] + 150.5 * scale * k, box["y"] + 100.5 * scale * k, steps=5)
        assert page.inner_text("#brush-position") == "Brush at 150, 100 (image pixels), painting."
        page.mouse.up()
        assert page.inner_text("#brush-position") == "Brush at 150, 100 (image pixels), lifted."
        # The keys go on from there.
        page.keyboard.press("ArrowLeft")
        step = 8 / scale  # editor.js KEY_STEP, in image pixels
        x = int(150.5 - step)
        assert page.inner_text("#brush-position") == f"Brush at {x}, 100 (image pixels), lifted."


def test_only_the_primary_button_paints(server: tuple[str, Path], tmp_path: Path) -> None:
    """A right click (for the context menu) or a middle click painted a full-strength dab
    and put the answer out of date: the pointerdown handler took every button."""
    url, _ = server
    image_path, _, _ = _canvas(tmp_path)
    with editor_page(url) as page:
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        page.click("#clear-map")
        page.click("#submit")
        page.wait_for_selector("#corrected-class[data-class-id]", timeout=20_000)
        answer = page.inner_text("#corrected-class")
        box = page.locator("#view").bounding_box()
        assert box is not None
        k = box["width"] / page.evaluate("view.width")
        for button, (x, y) in (("right", (100, 100)), ("middle", (300, 300))):
            page.mouse.click(box["x"] + x * k, box["y"] + y * k, button=button)
            page.mouse.move(box["x"] + (x + 50) * k, box["y"] + y * k)
        page.keyboard.press("Escape")  # the context menu, if one opened
        assert page.evaluate(EDITED_SUM, [0, 0, 512, 512]) == 0
        assert page.inner_text("#corrected-class") == answer
        page.mouse.click(box["x"] + 200 * k, box["y"] + 200 * k)  # the left button does
        assert page.evaluate(GREY_AT, [[200, 200]]) == [255]


def test_save_waits_for_a_change_after_a_save(server: tuple[str, Path], tmp_path: Path) -> None:
    """Save stayed enabled after a save, and a second click stored an identical record (the
    same image, map and label, weighted twice in fine-tuning): it is disabled until the map
    or the true class changes."""
    url, feedback = server
    image_path, _, _ = _canvas(tmp_path)
    expect = pytest.importorskip("playwright.sync_api").expect
    with editor_page(url) as page:
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        before = len(open_store(feedback).records())
        page.select_option("#label-select", LABELS[6])
        page.click("#save")
        page.wait_for_selector("#save-status[data-feedback-id]", timeout=20_000)
        expect(page.locator("#image-input")).to_be_enabled()  # the request is over
        expect(page.locator("#save")).to_be_disabled()
        assert len(open_store(feedback).records()) == before + 1
        # Another class: another record; the same one back: the record saved already.
        page.select_option("#label-select", LABELS[0])
        expect(page.locator("#save")).to_be_enabled()
        page.select_option("#label-select", LABELS[6])
        expect(page.locator("#save")).to_be_disabled()
        # An edit of the map: a new record to save.
        page.focus("#view")
        page.keyboard.press("Enter")
        expect(page.locator("#save")).to_be_enabled()
        page.click("#save")
        page.wait_for_selector("#save-status[data-feedback-id]", timeout=20_000)
        expect(page.locator("#image-input")).to_be_enabled()
        expect(page.locator("#save")).to_be_disabled()
        records = open_store(feedback).records()
        assert len(records) == before + 2
        assert records[-1].edited_map != records[-2].edited_map
        # A new image starts afresh (its true class is picked anew).
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        page.select_option("#label-select", LABELS[6])
        expect(page.locator("#save")).to_be_enabled()


def test_at_320_pixels_the_saved_record_wraps(server: tuple[str, Path], tmp_path: Path) -> None:
    """At 320 CSS pixels (WCAG reflow) the page has no sideways scrolling, also once a save
    names its record (the 32-character id could not wrap and widened the page) and for a
    file whose long name has no spaces (a phone camera's: the page was 672 pixels wide)."""
    url, _ = server
    canvas, _, _ = _canvas(tmp_path)
    image_path = tmp_path / "IMG_20261204_153012_holiday_photo_of_the_new_summer_dress_v2.png"
    canvas.rename(image_path)
    with editor_page(url) as page:
        page.set_viewport_size({"width": 320, "height": 568})
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        assert page.evaluate("document.documentElement.scrollWidth") <= 320
        page.select_option("#label-select", LABELS[4])
        page.click("#save")
        page.wait_for_selector("#save-status[data-feedback-id]", timeout=20_000)
        assert page.evaluate("document.documentElement.scrollWidth") <= 320
        status = page.locator("#save-status").bounding_box()
        assert status is not None and status["x"] + status["width"] <= 320


def test_a_server_that_does_not_answer_gives_the_controls_back(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    """A server that hangs (stopped, not gone) left "Classifying..." and every control
    disabled until the page was reloaded: after ANSWER_TIMEOUT_MS (60 s, run forward on the
    page's clock) the page says so and the file chooser works again."""
    url, _ = server
    image_path, _, _ = _canvas(tmp_path)
    expect = pytest.importorskip("playwright.sync_api").expect
    held: list[Any] = []
    with editor_page(url) as page:
        page.clock.install()
        page.route("**/attention", lambda route: held.append(route))
        page.set_input_files("#image-input", str(image_path))
        expect(page.locator("#status")).to_have_text("Classifying…")
        assert page.locator("#image-input").is_disabled()
        page.clock.run_for(61_000)
        expect(page.locator("#status")).to_contain_text("did not answer within 60 s")
        assert not page.locator("#image-input").is_disabled()
        page.unroute("**/attention")
        page.set_input_files("#image-input", str(image_path))  # and the next one is answered
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)


def test_an_older_key_check_answering_late_is_dropped(server: tuple[str, Path]) -> None:
    """A wrong key's check held back and the next key's answered first: the late 401 said
    the key now in the field was not accepted."""
    url, _ = server
    expect = pytest.importorskip("playwright.sync_api").expect
    held: list[Any] = []

    def hold_the_wrong_key(route: Any) -> None:
        if route.request.headers.get("x-api-key") == "wrong":
            held.append(route)
        else:
            route.continue_()

    with editor_page(url) as page:
        page.route("**/models", hold_the_wrong_key)
        page.fill("#api-key", "wrong")
        page.wait_for_timeout(600)  # the 300 ms typing pause, then the held request
        assert len(held) == 1
        with page.expect_response("**/models"):  # no key: this server needs none
            page.fill("#api-key", "")
        page.wait_for_timeout(300)  # the page has taken that answer
        answer_problem(401, "Unauthorized", "no")(held[0])
        page.wait_for_timeout(300)
        expect(page.locator("#key-status")).to_have_text("")


def test_a_key_accepted_after_a_401_clears_the_request_for_one(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    """After an upload refused for want of a key, typing one the server takes left the
    status line still asking for a valid key."""
    url, _ = server
    image_path, _, _ = _canvas(tmp_path)
    expect = pytest.importorskip("playwright.sync_api").expect
    with editor_page(url) as page:
        page.route("**/attention", answer_problem(401, "Unauthorized", "no key"))
        page.set_input_files("#image-input", str(image_path))
        expect(page.locator("#status")).to_contain_text("enter a valid API key above")
        page.fill("#api-key", "a-key")  # this server needs none: the check passes
        expect(page.locator("#status")).to_have_text("The API key is accepted: try again.")


def test_on_a_laptop_the_answer_comes_into_view(server: tuple[str, Path], tmp_path: Path) -> None:
    """At 1366 x 768 the answer to "Classify with my map" lay below the window (the status
    said only "Done"): it is scrolled into view when it comes, with the button still in
    view."""
    url, _ = server
    image_path, _, _ = _canvas(tmp_path)
    with editor_page(url) as page:
        page.set_viewport_size({"width": 1366, "height": 768})
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#original-class[data-class-id]", timeout=20_000)
        page.click("#submit")
        page.wait_for_selector("#corrected-class[data-class-id]", timeout=20_000)
        answer, button = (page.locator(s).bounding_box() for s in ("#corrected-class", "#submit"))
        assert answer is not None and button is not None
        for box in (answer, button):  # in the viewport's coordinates
            assert 0 <= box["y"] <= box["y"] + box["height"] <= 768
