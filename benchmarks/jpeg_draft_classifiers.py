"""What JPEG draft decoding does to the accuracy of the two classifiers on their held-out data.

    python -m benchmarks.jpeg_draft_classifiers [--model attention gender] [--count 2000] \
        [--seed 0] [--out benchmarks/results]

``benchmarks/jpeg_draft.py`` measured the service's JPEG draft decoding (libjpeg's 1/2, 1/4
or 1/8 DCT-domain reduction when the reduced image still covers the model input; setting
``VISION_JPEG_DRAFT``, on by default) for the landmark model only. An audit then found the
attention model's class flipping between the two decodes on 2 of 8 out-of-distribution
photos. This measures, per classifier and on the images its model card scores its
held-out accuracy on, whether the decode path changes accuracy:

1. ``--count`` held-out images, drawn as the card draws them:

   * ``attention`` (served version 5): the perception-branch accuracy of its card is
     measured on the official Fashion-MNIST test items (FASHION_MNIST_DIR), each placed
     once on a 64 x 64 canvas over a crop of the *test* background photographs
     (``models.attention.data.compose(items, labels, "test", N, seed=1000,
     config=CanvasConfig(), every_item=True)``: ``models.attention.export.test_split``,
     whose ``--test-items N`` takes these first N). With ``--seed 0`` these are exactly
     the card's first ``--count`` canvases (the card used all 10 000); ``--seed S`` places
     the same items on other canvases (seed 1000 + S). Beyond 10 000 the items repeat.
   * ``gender`` (served version 6, version 5's graph): the card's 2000 test garments,
     ``models.gender.data.generate(2000, "test", seed + 32, GarmentConfig(...))`` with the
     training run's seed (0) and garment settings read from config.json
     (``training.history``; ``models.gender.train.gender_data``, the offset is
     ``models.gender.shift.TEST_SEED_OFFSET``), 128 x 128 over the test photographs. With
     ``--seed 0`` and ``--count`` <= 2000 these are exactly the first garments of the
     card's split; ``--seed S`` draws other garments (seed 32 + S), also held out (test
     photographs). The card's own figure (0.954) is mildly optimistic: versions were
     chosen on this split; the paired comparison here is not affected by that.

   Both generators are prefix-stable (image n does not depend on the count), so a small
   ``--count`` measures the first images of the full set.
2. Each image (``(S, S, 3)`` uint8) upscaled FACTOR (4) times with Pillow's bicubic filter,
   so that draft decoding has something to reduce (256 px into 64, 512 px into 128:
   libjpeg's 1/4 scale), and encoded as a JPEG of quality 90 (Pillow, 4:2:0), as an upload
   would be.
3. For both paths (``Settings.jpeg_draft`` False / True), exactly the service's
   pre-processing: ``decode_rows_for`` (decode + letterbox with the config's pad, timed
   with ``time.perf_counter``, order alternated per image), ``Normalization.into``, then
   the committed graphs in ONNX Runtime on one intra-op thread (``OnnxSession``, digests
   checked): attention runs ``features.onnx`` and feeds its ``feature_map`` and
   ``attention_map`` to ``perception.onnx``, whose ``perception_probs`` give the served
   class (``service/routers/attention.py`` ``compute_features``,
   ``AttentionDecoder.classify``); gender's ``logits`` through a float64 softmax
   (``GenderDecoder.decode``). The predicted class is the arg-max.
4. Per model and path: accuracy; draft - full paired (only-full-right and only-draft-right
   counts, McNemar's exact two-sided p, the 95 % Wald interval of the paired difference:
   ``models.common.paired``); the share of images whose predicted class is the same on
   both paths; the change of the probability of the full-decode path's predicted class
   (mean and max of ``|p_draft(c) - p_full(c)|``); the median decode + letterbox time.
   As a reference, the accuracy on the held-out image itself (no upscaling, no JPEG,
   letterboxed as the service would), the input the card scores, and how far each path's
   model input lies from it (mean absolute difference in grey levels).

The uploads are made from images at the model's own resolution, so the best either path
can do is give back the image before upscaling: libjpeg's 4 x 4 area average nearly undoes
a 4x bicubic upscale, while Pillow's bilinear reduction (a triangle filter over 8 source
pixels) blurs more. What is measured is the decode path's effect on uploads like these, on
the models' held-out content; a real photograph taken at a higher resolution than the
model input is not such an upscale (benchmarks/jpeg_draft.py's landmark scenes, drawn at
4x, are nearer to one).

Writes ``jpeg_draft_classifiers.json`` and ``.md`` under ``--out`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from benchmarks.jpeg_draft import JPEG_QUALITY, PATHS, encode_jpeg, finish_report
from benchmarks.run import load_average
from models.attention.data import CanvasConfig, compose, load_fashion_mnist
from models.common.paired import mcnemar_exact, only_right, paired_difference_ci95
from models.gender.data import GarmentConfig, generate
from service.batching import Normalization, decode_rows_for
from service.decoding import GenderDecoder, build_decoder
from service.imaging import fit_image
from service.runtime import ModelConfig, OnnxSession, read_config, verify_sha256
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = ROOT / "models" / "repository"
# The versions the audit was about (those served on 2026-12-02; gender 7 came later).
MODEL_DIRS = {
    "attention": REPOSITORY / "attention" / "5",
    "gender": REPOSITORY / "gender" / "6",
}
# Held-out images are upscaled by this factor before encoding, so the draft decode has
# something to reduce: 4 gives libjpeg's 1/4 scale, the same as benchmarks/jpeg_draft.py.
FACTOR = 4
# The attention card's fixed test canvases: models.attention.export.TEST_SEED (not
# imported: that module needs torch; tests/benchmarks/test_jpeg_draft_classifiers.py checks
# the two agree).
ATTENTION_TEST_SEED = 1000
# The gender test split's seed is the training seed plus this: models.gender.shift's
# TEST_SEED_OFFSET, models.gender.train.gender_data (same check as above).
GENDER_TEST_SEED_OFFSET = 32
# Images per ONNX Runtime run and per decode chunk: one thread either way, batching only
# saves call overhead, and chunks keep only one batch of model inputs in memory.
RUN_BATCH = 32
ARTIFACT = "jpeg_draft_classifiers"


@dataclass(frozen=True)
class HeldOut:
    """``images (N, S, S, 3) uint8`` RGB, ``labels (N,) int64`` class ids into the
    config's labels, and how they were drawn (for the report)."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    source: dict[str, Any]


def attention_held_out(count: int, seed: int, config: ModelConfig) -> HeldOut:
    """The attention card's test canvases (``models.attention.export.test_split``): the
    Fashion-MNIST test items in order, canvas n holding item ``n % 10000``."""
    items, labels = load_fashion_mnist("test")
    canvas = CanvasConfig()
    if canvas.size != config.preprocess.width:
        raise SystemExit(f"CanvasConfig().size {canvas.size} is not the model input")
    canvases = compose(
        items,
        labels,
        "test",
        count,
        seed=ATTENTION_TEST_SEED + seed,
        config=canvas,
        every_item=True,
    )
    return HeldOut(
        canvases.images,
        canvases.labels[:, 0],
        {
            "data": "Fashion-MNIST test items on test-photograph canvases",
            "split": "test",
            "generator_seed": ATTENTION_TEST_SEED + seed,
            "items": f"test items 0..{min(count, len(items)) - 1} in order",
            "card_accuracy": config.metrics["test"]["perception_accuracy"],
            "card_images": config.metrics["test"]["test_items"],
        },
    )


def gender_held_out(count: int, seed: int, config: ModelConfig) -> HeldOut:
    """The gender card's test garments (``models.gender.train.gender_data``), with the
    training run's seed and garment settings as config.json records them."""
    history = config.training["history"]
    garments = GarmentConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in history["garments"].items()}
    )
    if garments.size != config.preprocess.width:
        raise SystemExit(f"garment size {garments.size} is not the model input")
    generator_seed = int(history["seed"]) + GENDER_TEST_SEED_OFFSET + seed
    drawn = generate(count, "test", generator_seed, garments)
    return HeldOut(
        drawn.images,
        drawn.labels,
        {
            "data": "generated garments over the test photographs",
            "split": "test",
            "generator_seed": generator_seed,
            "items": f"garments 0..{count - 1}",
            "card_accuracy": config.metrics["test_accuracy"],
            "card_images": config.metrics["test_images"],
        },
    )


# (N, H, W, 3) uint8 model inputs -> (N, K) float64 class probabilities.
Predict = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float64]]


def _session(model_dir: Path, file: str, sha256: str, settings: Settings) -> OnnxSession:
    verify_sha256(model_dir / file, sha256)
    return OnnxSession(model_dir / file, settings)


def attention_predictor(model_dir: Path, config: ModelConfig, settings: Settings) -> Predict:
    """The served prediction: features graph, then the perception graph on the model's own
    attention map; ``perception_probs`` are already probabilities (the decoder ranks them
    as they are)."""
    graphs = config.graph_configs()
    names = config.decode
    features_config = graphs[names["features_graph"]]
    perception_config = graphs[names["perception_graph"]]
    features = _session(model_dir, features_config.file, features_config.sha256, settings)
    perception = _session(model_dir, perception_config.file, perception_config.sha256, settings)
    image_input = features_config.inputs[0].name
    normalization = _normalization(config)

    def predict(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        extracted = features.run(
            {image_input: _batch(pixels, normalization)},
            [names["feature_map"], names["attention_map"]],
        )
        perceived = perception.run(
            {
                names["feature_map"]: extracted[names["feature_map"]],
                names["attention_map"]: extracted[names["attention_map"]],
            },
            [names["perception_probs"]],
        )
        return np.asarray(perceived[names["perception_probs"]], np.float64)

    return predict


def gender_predictor(model_dir: Path, config: ModelConfig, settings: Settings) -> Predict:
    """The served prediction: the service's own ``GenderDecoder`` over the graph's outputs
    (its probabilities, in label order)."""
    assert config.file is not None and config.sha256 is not None
    session = _session(model_dir, config.file, config.sha256, settings)
    image_input = config.inputs[0].name
    decoder = build_decoder(
        config.task,
        config.decode,
        config.labels,
        {spec.name: spec.shape for spec in config.all_outputs()},
    )
    assert isinstance(decoder, GenderDecoder)
    normalization = _normalization(config)

    def predict(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        outputs = session.run({image_input: _batch(pixels, normalization)})
        return np.array(
            [
                [decoder.decode(outputs, row).probabilities[label] for label in decoder.labels]
                for row in range(len(pixels))
            ],
            np.float64,
        )

    return predict


def _normalization(config: ModelConfig) -> Normalization:
    pre = config.preprocess
    return Normalization.of(pre.scale, pre.mean, pre.std)


def _batch(pixels: npt.NDArray[np.uint8], normalization: Normalization) -> npt.NDArray[np.float32]:
    """``(N, H, W, 3)`` uint8 into the service's ``(N, 3, H, W)`` float32 batch."""
    n, height, width, _ = pixels.shape
    batch = np.empty((n, 3, height, width), np.float32)
    normalization.into(pixels, batch)
    return batch


@dataclass(frozen=True)
class Classifier:
    """How one model's held-out images are drawn and how its served class is predicted."""

    held_out: Callable[[int, int, ModelConfig], HeldOut]
    predictor: Callable[[Path, ModelConfig, Settings], Predict]


CLASSIFIERS = {
    "attention": Classifier(attention_held_out, attention_predictor),
    "gender": Classifier(gender_held_out, gender_predictor),
}


def upscale(image: npt.NDArray[np.uint8], factor: int = FACTOR) -> npt.NDArray[np.uint8]:
    """``(S, S, 3)`` uint8 to ``(factor S, factor S, 3)`` uint8, Pillow bicubic."""
    height, width = image.shape[:2]
    big = Image.fromarray(image, mode="RGB").resize(
        (width * factor, height * factor), Image.Resampling.BICUBIC
    )
    return np.asarray(big, dtype=np.uint8)


def compare(
    labels: npt.NDArray[np.int64],
    full: npt.NDArray[np.float64],
    draft: npt.NDArray[np.float64],
) -> dict[str, Any]:
    """Paired draft - full figures of ``(N, K)`` probabilities on the same ``(N,)`` labels."""
    n = len(labels)
    full_class, draft_class = full.argmax(axis=1), draft.argmax(axis=1)
    only_draft, only_full = only_right(draft_class == labels, full_class == labels)
    low, high = paired_difference_ci95(only_draft, only_full, n)
    rows = np.arange(n)
    # The probability of the class the full decode answers, on both paths: how far the
    # served score moves for the same answer, or how far it fell where the answer changed.
    change = np.abs(draft[rows, full_class] - full[rows, full_class])
    return {
        "only_full_right": only_full,
        "only_draft_right": only_draft,
        "accuracy_difference": (only_draft - only_full) / n,
        "interval_95": [low, high],
        "mcnemar_p": mcnemar_exact(only_draft, only_full),
        "identical_class_share": float((full_class == draft_class).mean()),
        "class_changed": int((full_class != draft_class).sum()),
        "predicted_probability_change_mean": float(change.mean()),
        "predicted_probability_change_max": float(change.max()),
    }


def measure_model(name: str, count: int, seed: int, settings: Settings) -> dict[str, Any]:
    """Both decode paths over ``count`` (>= 1) held-out images of model ``name``."""
    model_dir = MODEL_DIRS[name]
    config = read_config(model_dir)
    pre = config.preprocess
    classifier = CLASSIFIERS[name]
    held_out = classifier.held_out(count, seed, config)
    predict = classifier.predictor(model_dir, config, settings)
    path_settings = {
        path: settings.model_copy(update={"jpeg_draft": draft}) for path, draft in PATHS.items()
    }

    probs: dict[str, list[npt.NDArray[np.float64]]] = {key: [] for key in (*PATHS, "card_input")}
    seconds: dict[str, list[float]] = {path: [] for path in PATHS}
    jpeg_bytes: list[int] = []
    abs_diff = {"draft_vs_full": 0.0, **{path: 0.0 for path in PATHS}}
    for start in range(0, count, RUN_BATCH):
        chunk = held_out.images[start : start + RUN_BATCH]
        rows: dict[str, list[npt.NDArray[np.uint8]]] = {path: [] for path in PATHS}
        for offset, image in enumerate(chunk):
            data = encode_jpeg(upscale(image), JPEG_QUALITY)
            jpeg_bytes.append(len(data))
            # Alternate which path decodes first, so neither always finds the bytes cold.
            order = list(PATHS) if (start + offset) % 2 == 0 else list(PATHS)[::-1]
            for path in order:
                began = time.perf_counter()
                image_rows, _ = decode_rows_for(data, pre, path_settings[path])
                seconds[path].append(time.perf_counter() - began)
                rows[path].append(image_rows.pixels[0])  # (H, W, 3) uint8
        stacked = {path: np.stack(rows[path]) for path in PATHS}  # (n, H, W, 3) uint8
        # The card's input: the held-out image itself, fitted as the service would (the
        # same size as the input here, so unchanged), no upscaling and no JPEG.
        stacked["card_input"] = np.stack(
            [
                fit_image(
                    image, pre.height, pre.width, pre.pad_value, resize=pre.resize, pad=pre.pad
                )[0]
                for image in chunk
            ]
        )
        # Summed absolute differences in grey levels: between the paths, and of each path
        # from the card's input (how much of the image before upscaling and JPEG it recovers).
        for (a, b), key in (
            (("full", "draft"), "draft_vs_full"),
            (("full", "card_input"), "full"),
            (("draft", "card_input"), "draft"),
        ):
            abs_diff[key] += _abs_diff_sum(stacked[a], stacked[b])
        for key, pixels in stacked.items():
            probs[key].append(predict(pixels))

    labels = held_out.labels
    values = count * pre.height * pre.width * 3
    results = {key: np.concatenate(value) for key, value in probs.items()}  # (N, K) float64
    paths = {
        path: {
            "draft": PATHS[path],
            "accuracy": float((results[path].argmax(axis=1) == labels).mean()),
            "correct": int((results[path].argmax(axis=1) == labels).sum()),
            "decode_letterbox_ms_median": 1000 * statistics.median(seconds[path]),
            "input_mean_abs_diff_from_card_input_grey_levels": abs_diff[path] / values,
        }
        for path in PATHS
    }
    side = held_out.images.shape[1]
    return {
        "model": {
            "name": config.name,
            "version": config.version,
            "sha256": {g: spec.sha256 for g, spec in config.graph_configs().items()},
            "input": [pre.height, pre.width],
            "resize": pre.resize,
            "pad": pre.pad,
            "pad_value": list(pre.pad_value),
        },
        "held_out": {**held_out.source, "images": count, "seed": seed},
        "image_side": side,
        "upload_side": side * FACTOR,
        "jpeg_bytes_median": statistics.median(jpeg_bytes),
        "card_input_accuracy": float((results["card_input"].argmax(axis=1) == labels).mean()),
        "paths": paths,
        "draft_minus_full": {
            **compare(labels, results["full"], results["draft"]),
            "model_input_mean_abs_diff_grey_levels": abs_diff["draft_vs_full"] / values,
        },
    }


def _abs_diff_sum(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> float:
    """Sum of ``|a - b|`` over two same-shape uint8 arrays, in grey levels."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).sum())


def _p(value: float) -> str:
    """A p-value readable at both ends: 4 decimals, or scientific below 0.001."""
    return f"{value:.4f}" if value >= 0.001 else f"{value:.1e}"


def markdown(report: dict[str, Any]) -> str:
    """The tables of jpeg_draft_classifiers.md."""
    models = report["models"]
    lines = [
        "# JPEG draft decoding vs full decode: attention and gender classifiers",
        "",
        f"`{report['command']}` ({report['date']}, {report['count']} held-out images per model, "
        f"seed {report['seed']})",
        "",
        f"Each held-out image upscaled {report['factor']}x (Pillow bicubic) and encoded as a JPEG "
        f"of quality {report['jpeg_quality']}, then decoded and letterboxed by the service's "
        "`decode_rows_for` with `jpeg_draft` off (full decode + bilinear resize) and on (libjpeg "
        "DCT-domain reduction, the service default), normalised as the service does and run "
        f"through the committed graphs in ONNX Runtime ({report['intra_op_threads']} intra-op "
        "thread). Paired on the same images: draft - full, its 95 % interval (Wald, paired "
        "proportions) and McNemar's exact two-sided p (`models/common/paired.py`).",
        "",
        "| model | held-out images | card's input (no upscale, no JPEG) | full decode "
        "(`draft=False`) | draft (`draft=True`, service default) | draft - full | 95 % interval "
        "| only full right / only draft right | McNemar p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in models.items():
        full, draft = entry["paths"]["full"], entry["paths"]["draft"]
        delta = entry["draft_minus_full"]
        low, high = delta["interval_95"]
        lines.append(
            f"| {name} v{entry['model']['version']} | {entry['held_out']['images']} | "
            f"{entry['card_input_accuracy']:.4f} | {full['accuracy']:.4f} | "
            f"{draft['accuracy']:.4f} | {delta['accuracy_difference']:+.4f} | "
            f"[{low:+.4f}, {high:+.4f}] | {delta['only_full_right']} / "
            f"{delta['only_draft_right']} | {_p(delta['mcnemar_p'])} |"
        )
    lines += [
        "",
        "| model | same predicted class on both paths | probability of the full path's class, "
        "mean / max change | model input mean abs difference, draft vs full (grey levels) | "
        "model input mean abs difference from the card's input, full / draft | decode + "
        "letterbox median ms/image, full / draft | upload |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in models.items():
        full, draft = entry["paths"]["full"], entry["paths"]["draft"]
        delta = entry["draft_minus_full"]
        a, b = full["decode_letterbox_ms_median"], draft["decode_letterbox_ms_median"]
        lines.append(
            f"| {name} v{entry['model']['version']} | {delta['identical_class_share']:.4f} "
            f"({delta['class_changed']} changed) | "
            f"{delta['predicted_probability_change_mean']:.4f} / "
            f"{delta['predicted_probability_change_max']:.4f} | "
            f"{delta['model_input_mean_abs_diff_grey_levels']:.3f} | "
            f"{full['input_mean_abs_diff_from_card_input_grey_levels']:.3f} / "
            f"{draft['input_mean_abs_diff_from_card_input_grey_levels']:.3f} | {a:.3f} / {b:.3f} "
            f"({a / b:.2f}x) | {entry['upload_side']} px square into "
            f"{entry['model']['input'][1]} px, median {entry['jpeg_bytes_median']:.0f} bytes |"
        )
    lines += ["", "Held-out images:", ""]
    for name, entry in models.items():
        source = entry["held_out"]
        lines.append(
            f"- {name}: {source['data']} ({source['items']}, generator seed "
            f"{source['generator_seed']}); the card's figure is {source['card_accuracy']:.4f} on "
            f"{source['card_images']} images."
        )
    lines += [
        "",
        "The card's-input column scores the held-out image itself, as the card does (so at "
        "--seed 0 it is the card's figure on the first images); the two decode columns score the "
        "same images after upscaling and JPEG, so they differ from it by what an upload adds, "
        "and from each other only by the decode path. The uploads are upscales of images at the "
        "model's resolution: libjpeg's 4 x 4 area average nearly undoes a 4x bicubic upscale, "
        "Pillow's bilinear reduction blurs more (the distance from the card's input above), so "
        "these figures are for such uploads, not for photographs taken at a higher resolution "
        "than the input. Timings: one `decode_rows_for` call per "
        "image and path (order alternated), `time.perf_counter`, on "
        f"{report['machine']['cpu']} with load average {report['machine']['load_before']} "
        f"before and {report['machine']['load_after']} after (a shared machine: timings move "
        "with what else runs).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", nargs="+", choices=sorted(CLASSIFIERS), default=sorted(CLASSIFIERS)
    )
    parser.add_argument("--count", type=int, default=2000, help="held-out images per model")
    parser.add_argument(
        "--seed", type=int, default=0, help="0: the cards' own held-out images; else fresh ones"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.seed < 0:
        parser.error("--seed must not be negative")
    load_before = load_average()
    started = time.perf_counter()
    settings = Settings(providers="cpu", intra_op_threads=1, inter_op_threads=1)
    report: dict[str, Any] = {
        "command": shlex.join(
            [
                "python",
                "-m",
                f"benchmarks.{ARTIFACT}",
                *(sys.argv[1:] if argv is None else argv),
            ]
        ),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "count": args.count,
        "seed": args.seed,
        "factor": FACTOR,
        "jpeg_quality": JPEG_QUALITY,
        "intra_op_threads": 1,
        # dict.fromkeys keeps the order given and drops a model named twice.
        "models": {
            name: measure_model(name, args.count, args.seed, settings)
            for name in dict.fromkeys(args.model)
        },
    }
    return finish_report(report, load_before, started, args.out, ARTIFACT, markdown)


if __name__ == "__main__":
    main()
