"""What the service's JPEG draft decoding does to the landmark model's results.

    python -m benchmarks.jpeg_draft [--count 300] [--seed 0] [--out benchmarks/results]

Since d0a54ca the service decodes a JPEG at libjpeg's 1/2, 1/4 or 1/8 scale when the
reduced image still covers the letterboxed model input (``service.imaging.decode_to_fit``,
``decode_rows(..., draft=True)``, setting ``VISION_JPEG_DRAFT``, on by default). The
reduction is an area average in the DCT domain, so the model sees slightly different
pixels than after a full decode and a bilinear resize (``draft=False``). This measures,
on the same images, whether that changes the served model's answers:

1. ``--count`` held-out scenes of the landmark generator (``models/landmark/scenes.py``,
   split ``test``, the photographs the model never saw) generated at FACTOR (4) times the
   model input side, every pixel-valued field of the default ``SceneConfig`` scaled by it
   (640 x 640 scenes with 48-224 px landmarks for the 160 x 160 input), each encoded as a
   JPEG of quality 90 (Pillow), as an upload would be;
2. for both paths, exactly the service's pre-processing: ``decode_rows`` (decode +
   letterbox, timed with ``time.perf_counter``), ``Normalization.into``, the committed
   ``models/repository/landmark/1`` graph in ONNX Runtime on one intra-op thread
   (``OnnxSession``, the digest checked), and the decoding and metrics of the model card
   (``models/landmark/evaluate.py``: decode with the config's threshold and NMS radius,
   match labels mapped into model-input pixels with ``transform.to_model`` within
   MATCH_RADIUS, ``summarize`` at the card's operating score);
3. the agreement of the two paths at the operating score (the API's default ``min_score``):
   the share of images whose detected classes are identical, and the shift of the points
   of detections paired across paths (same class, within MATCH_RADIUS), in image pixels;
   and, for each metric, a paired bootstrap over the images (BOOTSTRAP resamples) of the
   draft - full difference, so a difference can be read against the spread of the set.

Writes ``jpeg_draft.json`` and ``jpeg_draft.md`` under ``--out`` and prints the markdown.
The scenes' clutter sizes, blur radius and noise are fixed in pixels by the generator and
not scaled, so at 4x they are relatively smaller than in the card's 160 px test scenes:
absolute metrics are not the card's; the comparison between the two paths is paired.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from benchmarks.run import cpu_model, load_average
from models.landmark.evaluate import MATCH_RADIUS, Detections, Match, decode, match, summarize
from models.landmark.scenes import SceneConfig, generate
from service.batching import Normalization, decode_rows_for
from service.imaging import LetterboxTransform
from service.runtime import OnnxSession, read_config, verify_sha256
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "repository" / "landmark" / "1"
# Scenes are generated at this multiple of the model input side, so the draft decode has
# something to reduce (640 px into 160 px: libjpeg's 1/4 scale).
FACTOR = 4
JPEG_QUALITY = 90
SPLIT = "test"
# Images per ONNX Runtime run (one thread either way; batching only saves call overhead).
RUN_BATCH = 32
# The two decodes compared: name -> decode_rows(draft=...).
PATHS = {"full": False, "draft": True}
# Resamples of the paired bootstrap (images drawn with replacement, both paths on the same
# draw) that gives the spread of each draft - full difference.
BOOTSTRAP = 1000
# Metrics of summarize() compared between the paths (the model card's table).
COMPARED = (
    "recall_at_precision_95",
    "average_precision",
    "precision",
    "recall",
    "class_accuracy",
    "mean_point_error_px",
)
# Metrics of summarize() that are shares in [0, 1].
SHARE_METRICS = (
    "average_precision",
    "recall_at_precision_95",
    "precision",
    "recall",
    "class_accuracy",
)


def scene_config(input_size: int, factor: int = FACTOR) -> SceneConfig:
    """The default SceneConfig with every pixel-valued field multiplied by ``factor``."""
    base = SceneConfig()
    if base.size != input_size:
        raise SystemExit(f"SceneConfig().size {base.size} is not the model input {input_size}")
    return dataclasses.replace(
        base,
        size=base.size * factor,
        min_landmark=base.min_landmark * factor,
        max_landmark=base.max_landmark * factor,
    )


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """``(H, W, 3)`` uint8 RGB as JPEG bytes (Pillow's defaults otherwise: 4:2:0)."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def labels_to_model(labels: np.ndarray, transform: LetterboxTransform) -> np.ndarray:
    """``(L, 4)`` rows ``(class, x, y, width)`` from image pixels to model-input pixels."""
    out = np.array(labels, dtype=np.float64).reshape(-1, 4)
    out[:, 1:3] = transform.to_model(out[:, 1:3])
    out[:, 3] *= transform.scale
    return out


def at_score(det: Detections, score: float) -> Detections:
    """The detections the API returns at ``min_score=score``."""
    keep = det.scores >= score
    return Detections(det.classes[keep], det.scores[keep], det.points[keep])


def pair(a: Detections, b: Detections, radius: float) -> list[tuple[int, int, float]]:
    """Greedy pairs ``(i, j, distance)`` of ``a``'s and ``b``'s detections, ``a`` by score:
    same class, points within ``radius`` (model-input pixels), each used once."""
    used = np.zeros(len(b.scores), bool)
    pairs = []
    for i in np.argsort(-a.scores, kind="stable"):
        d = np.hypot(b.points[:, 0] - a.points[i, 0], b.points[:, 1] - a.points[i, 1])
        d[used | (b.classes != a.classes[i])] = np.inf
        if len(d) and d.min() <= radius:
            j = int(d.argmin())
            used[j] = True
            pairs.append((int(i), j, float(d[j])))
    return pairs


def agreement(
    full: list[Detections],
    draft: list[Detections],
    transforms: list[LetterboxTransform],
    full_matches: list[Match],
    draft_matches: list[Match],
    score: float,
) -> dict[str, Any]:
    """How far the two paths' answers at ``score`` differ, image by image."""
    identical = 0
    shifts: list[float] = []
    score_changes: list[float] = []
    only_full = only_draft = 0
    for a, b, transform in zip(full, draft, transforms, strict=True):
        a, b = at_score(a, score), at_score(b, score)
        identical += sorted(a.classes.tolist()) == sorted(b.classes.tolist())
        pairs = pair(a, b, MATCH_RADIUS)
        shifts += [d / transform.scale for _, _, d in pairs]  # image pixels
        score_changes += [abs(float(a.scores[i] - b.scores[j])) for i, j, _ in pairs]
        only_full += len(a.scores) - len(pairs)
        only_draft += len(b.scores) - len(pairs)
    found_full = np.concatenate([m.label_found for m in full_matches]) >= score
    found_draft = np.concatenate([m.label_found for m in draft_matches]) >= score
    return {
        "images": len(full),
        "identical_classes_share": identical / max(len(full), 1),
        "paired_detections": len(shifts),
        "detections_only_full": only_full,
        "detections_only_draft": only_draft,
        "point_shift_image_px_mean": float(np.mean(shifts)) if shifts else None,
        "point_shift_image_px_p99": float(np.percentile(shifts, 99)) if shifts else None,
        "point_shift_image_px_max": float(np.max(shifts)) if shifts else None,
        "score_change_mean": float(np.mean(score_changes)) if score_changes else None,
        "score_change_max": float(np.max(score_changes)) if score_changes else None,
        "labels_found_by_full_only": int((found_full & ~found_draft).sum()),
        "labels_found_by_draft_only": int((found_draft & ~found_full).sum()),
    }


def paired_bootstrap(
    full: list[Match],
    draft: list[Match],
    num_classes: int,
    score: float,
    resamples: int = BOOTSTRAP,
    seed: int = 0,
) -> dict[str, list[float] | None]:
    """The 2.5 and 97.5 percentiles of ``draft - full`` for each COMPARED metric over
    ``resamples`` draws of the images with replacement (the same draw for both paths): how
    far the difference moves with the choice of images."""
    rng = np.random.default_rng(seed)
    deltas: dict[str, list[float]] = {key: [] for key in COMPARED}
    for _ in range(resamples):
        chosen = rng.integers(0, len(full), len(full))
        a = summarize([full[i] for i in chosen], num_classes, score)
        b = summarize([draft[i] for i in chosen], num_classes, score)
        for key in COMPARED:
            if a[key] is not None and b[key] is not None:
                deltas[key].append(b[key] - a[key])
    return {
        key: [float(v) for v in np.percentile(values, [2.5, 97.5])] if values else None
        for key, values in deltas.items()
    }


def measure(count: int, seed: int) -> dict[str, Any]:
    """Run both paths over ``count`` (>= 1) scenes; the report as jpeg_draft.json has it."""
    config = read_config(MODEL_DIR)
    assert config.file is not None and config.sha256 is not None
    verify_sha256(MODEL_DIR / config.file, config.sha256)
    pre, dec = config.preprocess, config.decode
    operating_score = float(config.metrics["test"]["operating_score"])
    scenes_config = scene_config(pre.width)
    settings = Settings(providers="cpu", intra_op_threads=1, inter_op_threads=1)
    session = OnnxSession(MODEL_DIR / config.file, settings)
    input_name = config.inputs[0].name
    normalization = Normalization.of(pre.scale, pre.mean, pre.std)
    # The service's own decode call, once with JPEG draft off and once on.
    path_settings = {
        name: settings.model_copy(update={"jpeg_draft": draft}) for name, draft in PATHS.items()
    }

    labels: list[np.ndarray] = []
    rows: dict[str, list[np.ndarray]] = {name: [] for name in PATHS}
    transforms: dict[str, list[LetterboxTransform]] = {name: [] for name in PATHS}
    seconds: dict[str, list[float]] = {name: [] for name in PATHS}
    jpeg_bytes: list[int] = []
    for index in range(count):
        scene = generate(scenes_config, SPLIT, index, seed)
        data = encode_jpeg(scene.image)
        jpeg_bytes.append(len(data))
        labels.append(scene.labels)
        # Alternate which path decodes first, so neither always finds the bytes cold.
        order = list(PATHS) if index % 2 == 0 else list(PATHS)[::-1]
        for name in order:
            began = time.perf_counter()
            image_rows, transform = decode_rows_for(data, pre, path_settings[name])
            seconds[name].append(time.perf_counter() - began)
            rows[name].append(image_rows.pixels[0])  # (H, W, 3) uint8
            transforms[name].append(transform)
    if transforms["full"] != transforms["draft"]:
        raise SystemExit("the two paths letterboxed into different transforms")

    detections: dict[str, list[Detections]] = {}
    matches: dict[str, list[Match]] = {}
    report_paths: dict[str, Any] = {}
    for name in PATHS:
        pixels = np.stack(rows[name])  # (N, H, W, 3) uint8
        outputs: dict[str, list[np.ndarray]] = {}
        for start in range(0, count, RUN_BATCH):
            chunk = pixels[start : start + RUN_BATCH]
            batch = np.empty((len(chunk), 3, pre.height, pre.width), np.float32)
            normalization.into(chunk, batch)  # (N, 3, H, W) float32
            for key, value in session.run({input_name: batch}).items():
                outputs.setdefault(key, []).extend(value)
        detections[name] = [
            decode(
                probs,
                conf,
                points,
                confidence_threshold=float(dec["confidence_threshold"]),
                min_score=float(dec["confidence_threshold"]),
                nms_radius=float(dec["nms_radius"]),
            )
            for probs, conf, points in zip(
                outputs.get("class_probs", []),
                outputs.get("confidence", []),
                outputs.get("points", []),
                strict=True,
            )
        ]
        matches[name] = [
            match(det, labels_to_model(lab, transform))
            for det, lab, transform in zip(detections[name], labels, transforms[name], strict=True)
        ]
        report_paths[name] = {
            "draft": PATHS[name],
            "images": count,
            "detections_at_operating_score": sum(
                len(at_score(det, operating_score).scores) for det in detections[name]
            ),
            "metrics": summarize(matches[name], len(config.labels), operating_score),
            "decode_letterbox_ms_median": 1000 * statistics.median(seconds[name]),
        }
    full_pixels = np.stack(rows["full"]).astype(np.int16)
    draft_pixels = np.stack(rows["draft"]).astype(np.int16)
    return {
        "count": count,
        "split": SPLIT,
        "seed": seed,
        "scene_config": dataclasses.asdict(scenes_config),
        "scene_factor": FACTOR,
        "jpeg_quality": JPEG_QUALITY,
        "jpeg_bytes_median": statistics.median(jpeg_bytes),
        "model": {"name": config.name, "version": config.version, "sha256": config.sha256},
        "match_radius_model_px": MATCH_RADIUS,
        "operating_score": operating_score,
        "intra_op_threads": 1,
        "paths": report_paths,
        "bootstrap_resamples": BOOTSTRAP,
        "difference_interval_95": paired_bootstrap(
            matches["full"], matches["draft"], len(config.labels), operating_score, seed=seed
        ),
        "agreement": {
            **agreement(
                detections["full"],
                detections["draft"],
                transforms["full"],
                matches["full"],
                matches["draft"],
                operating_score,
            ),
            "model_input_mean_abs_diff_grey_levels": float(
                np.abs(full_pixels - draft_pixels).mean()
            ),
        },
    }


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The tables of jpeg_draft.md."""
    full, draft = report["paths"]["full"], report["paths"]["draft"]
    score = report["operating_score"]
    rows = [
        ("recall at precision >= 95 %", "recall_at_precision_95"),
        ("average precision", "average_precision"),
        (f"precision at score >= {score:g}", "precision"),
        (f"recall at score >= {score:g}", "recall"),
        ("class accuracy of matched detections", "class_accuracy"),
        ("mean point error (px, model input)", "mean_point_error_px"),
    ]
    lines = [
        "# JPEG draft decoding vs full decode: landmark model",
        "",
        f"`{report['command']}` ({report['date']}, {report['count']} scenes)",
        "",
        f"Held-out `{report['split']}` scenes (seed {report['seed']}) generated at "
        f"{report['scene_config']['size']} px ({report['scene_factor']}x the model input), JPEG "
        f"quality {report['jpeg_quality']} (median {_fmt(report['jpeg_bytes_median'], 0)} bytes); "
        f"model {report['model']['name']} v{report['model']['version']} in ONNX Runtime, "
        f"{report['intra_op_threads']} intra-op thread; {report['labels']} labels; match radius "
        f"{report['match_radius_model_px']:g} px at model input. Metrics are the model card's "
        "(`models/landmark/evaluate.py` `summarize`).",
        "",
        "| metric | full decode (`draft=False`) | draft (`draft=True`, service default) | "
        f"draft - full | 95 % interval of the difference ({report['bootstrap_resamples']} "
        "paired bootstrap resamples of the images) |",
        "|---|---|---|---|---|",
    ]
    for title, key in rows:
        a, b = full["metrics"][key], draft["metrics"][key]
        delta = f"{b - a:+.4f}" if a is not None and b is not None else "n/a"
        interval = report["difference_interval_95"].get(key)
        spread = f"[{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "n/a"
        lines.append(f"| {title} | {_fmt(a)} | {_fmt(b)} | {delta} | {spread} |")
    lines.append(
        f"| detections at score >= {score:g} | {full['detections_at_operating_score']} | "
        f"{draft['detections_at_operating_score']} | "
        f"{draft['detections_at_operating_score'] - full['detections_at_operating_score']:+d} | |"
    )
    a, b = full["decode_letterbox_ms_median"], draft["decode_letterbox_ms_median"]
    ratio = f"{a / b:.2f}x faster" if a and b else "n/a"
    lines.append(
        f"| decode + letterbox, median ms/image | {_fmt(a, 3)} | {_fmt(b, 3)} | {ratio} | |"
    )
    agree = report["agreement"]
    lines += [
        "",
        f"Agreement of the two paths at score >= {score:g} (the API's default `min_score`):",
        "",
        "| | value |",
        "|---|---|",
        f"| images with identical detected classes | {_fmt(agree['identical_classes_share'])} |",
        f"| detections paired across paths (same class, <= {report['match_radius_model_px']:g} "
        f"model px) | {agree['paired_detections']} |",
        f"| detections only in full / only in draft | {agree['detections_only_full']} / "
        f"{agree['detections_only_draft']} |",
        f"| point shift of paired detections, mean / 99th percentile / max (image px) | "
        f"{_fmt(agree['point_shift_image_px_mean'], 3)} / "
        f"{_fmt(agree['point_shift_image_px_p99'], 3)} / "
        f"{_fmt(agree['point_shift_image_px_max'], 3)} |",
        f"| score change of paired detections, mean / max | "
        f"{_fmt(agree['score_change_mean'])} / {_fmt(agree['score_change_max'])} |",
        f"| labels found only by full / only by draft | {agree['labels_found_by_full_only']} / "
        f"{agree['labels_found_by_draft_only']} |",
        f"| model input mean abs difference (grey levels) | "
        f"{_fmt(agree['model_input_mean_abs_diff_grey_levels'], 3)} |",
        "",
        "Timings: one `decode_rows` call per image and path (order alternated), "
        f"`time.perf_counter`, on {report['machine']['cpu']} with load average "
        f"{report['machine']['load_before']} before and {report['machine']['load_after']} after "
        "(a shared machine: timings move with what else runs). Clutter, blur and noise of the "
        "generator are fixed in pixels and not scaled, so absolute metrics differ from the "
        "model card's 160 px test scenes; the two columns are paired on the same images.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300, help="held-out scenes")
    parser.add_argument("--seed", type=int, default=0, help="scene generator seed")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    load_before = load_average()
    started = time.perf_counter()
    report = {
        "command": shlex.join(
            ["python", "-m", "benchmarks.jpeg_draft", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **measure(args.count, args.seed),
    }
    report["labels"] = report["paths"]["full"]["metrics"]["labels"]
    return finish_report(report, load_before, started, args.out, "jpeg_draft", markdown)


def finish_report(
    report: dict[str, Any],
    load_before: Any,
    started: float,
    out: Path,
    artifact: str,
    markdown: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    """Add the machine (load average before and now) and the total time to ``report``,
    write it as ``artifact``.json and its ``markdown`` as .md under ``out``, print the
    markdown; the report."""
    report["machine"] = {
        "cpu": cpu_model(),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "load_before": load_before,
        "load_after": load_average(),
    }
    report["seconds_total"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{artifact}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / f"{artifact}.md").write_text(text)
    print(text, end="")
    return report


if __name__ == "__main__":
    main()
