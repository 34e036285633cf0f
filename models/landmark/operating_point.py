"""An operating threshold chosen without the test split, and what it gives on the test split.

    python -m models.landmark.operating_point --version-dir models/repository/landmark/1

"Recall at precision >= 95 %" in the model card is a property of the test split's whole
precision-recall curve (like average precision): the threshold that reaches it is read off
that same curve. A user running the model needs one threshold fixed in advance, so this
picks it the only fair way, on the validation split (the lowest score at which validation
precision is still >= 95 %), and measures the test split at that score. Runs the exported
ONNX graph on both generated splits (the seed and sizes recorded in ``config.json``); writes
``operating_point.json`` into the version directory.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from models.landmark.data import LandmarkDataset
from models.landmark.evaluate import decode, match, summarize
from models.landmark.scenes import LABELS
from models.landmark.train import CONFIDENCE_THRESHOLD, NMS_RADIUS, OPERATING_SCORE, TrainConfig
from models.landmark.train import load_data as load_split

OUT_NAME = "operating_point.json"


def matched(predictions: list, labels: list) -> list:
    """Each scene's predictions (ONNX outputs), decoded as the service does, matched to its
    labels."""
    return [
        match(
            decode(
                *prediction,
                confidence_threshold=CONFIDENCE_THRESHOLD,
                min_score=CONFIDENCE_THRESHOLD,
                nms_radius=NMS_RADIUS,
            ),
            scene_labels,
        )
        for prediction, scene_labels in zip(predictions, labels, strict=True)
    ]


def split_matches(onnx: Path, dataset: LandmarkDataset) -> list:
    """Every scene of ``dataset`` run through the ONNX graph and ``matched``."""
    from models.landmark.export import onnx_predict  # export imports this module

    return matched(onnx_predict(onnx, dataset), dataset.arrays.labels)


def operating_point(val_matches: list, test_matches: list) -> dict:
    """The validation split's threshold for precision >= 95 % and the test split at it."""
    val = summarize(val_matches, len(LABELS), OPERATING_SCORE)
    score = val["score_at_precision_95"]
    if score is None:
        return {"chosen_on": "validation", "score": None}
    at_val = summarize(val_matches, len(LABELS), score)
    test = summarize(test_matches, len(LABELS), score)
    return {
        "chosen_on": "validation",
        "score": score,
        "val_precision": at_val["precision"],
        "val_recall": at_val["recall"],
        "test_precision": test["precision"],
        "test_recall": test["recall"],
        "test_class_accuracy": test["class_accuracy"],
        "test_mean_point_error_px": test["mean_point_error_px"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version-dir", type=Path, required=True)
    parser.add_argument(
        "--val-images",
        type=int,
        default=None,
        help="validation scenes (default: config.json's training.val_images; versions "
        "exported before it was recorded: the training default)",
    )
    args = parser.parse_args(argv)
    config = json.loads((args.version_dir / "config.json").read_text())
    training, pre = config["training"], config["preprocess"]
    if not training.get("synthetic", True):
        raise SystemExit("only versions trained on generated scenes can be re-measured here")
    defaults = TrainConfig()
    cfg = TrainConfig(
        seed=training["seed"],
        test_images=training["test_images"],
        val_images=args.val_images or training.get("val_images", defaults.val_images),
        cache_dir=None,
        # The scenes are drawn at the graph's input size.
        net=replace(defaults.net, input_size=pre["width"]),
    )
    matches = {
        split: split_matches(
            args.version_dir / "model.onnx",
            LandmarkDataset(load_split(cfg, split), pre["mean"], pre["std"]),
        )
        for split in ("val", "test")
    }
    result = {
        **operating_point(matches["val"], matches["test"]),
        "val_images": cfg.val_images,
        "test_images": cfg.test_images,
        "command": "python -m models.landmark.operating_point --version-dir "
        + str(args.version_dir),
    }
    (args.version_dir / OUT_NAME).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
