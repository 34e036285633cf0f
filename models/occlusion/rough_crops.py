"""Clean and occluded rough face crops through the served graph, letterboxed or cropped.

    python -m models.occlusion.rough_crops [--version-dir models/repository/occlusion/1]
        [--out models/repository/occlusion/1/measured-rough-crops.json]

The model was trained on full 112x96 aligned faces; API.md also accepts "a roughly
cropped face". The raw lfw_subset crops (square 25x25 grey, upsampled to 100x100 as
``builtin_faces`` does before aligning) are such crops. Each goes through the service's own
``fit_image`` under both ``resize`` modes (``letterbox``: grey bars above and below;
``crop``: the sides cut) and the exported graph; reported: the share called occluded
(argmax pattern != 0) of the clean crops (all 100, and those of the held-out val/test
people), of the same crops with the lower 40 % blacked out (a mask) and with a black band
over 30-45 % of the height (glasses), and of the 102 aligned faces (where the two modes
are the same transform). The question and rule were written first:
``measured-rough-crops-RULE.txt`` beside the card.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from models.occlusion.faces import LFW_UPSAMPLE, _rgb, builtin_faces, split_identities
from service.imaging import ResizeMode, fit_image

MODES: tuple[ResizeMode, ...] = ("letterbox", "crop")
# Occluders drawn on the rough crops, as fractions of the crop's height (black rows).
OCCLUDERS = {"mask_lower_40pct": (0.6, 1.0), "glasses_band_30_45pct": (0.3, 0.45)}


def raw_crops() -> list[np.ndarray]:
    """lfw_subset's 100 face crops, RGB uint8, upsampled as builtin_faces does."""
    import skimage.data

    return [
        np.asarray(
            Image.fromarray(_rgb(face)).resize(
                (LFW_UPSAMPLE, LFW_UPSAMPLE), Image.Resampling.BICUBIC
            )
        )
        for face in skimage.data.lfw_subset()[:100]
    ]


def black_rows(image: np.ndarray, top: float, bottom: float) -> np.ndarray:
    out = image.copy()
    height = image.shape[0]
    out[int(height * top) : int(height * bottom)] = 0
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version-dir", type=Path, default=Path("models/repository/occlusion/1"))
    parser.add_argument("--out", type=Path, default=None, help="write the figures here (JSON)")
    args = parser.parse_args(argv)
    config = json.loads((args.version_dir / "config.json").read_text())
    pre = config["preprocess"]
    session = ort.InferenceSession(
        str(args.version_dir / config["file"]), providers=["CPUExecutionProvider"]
    )
    name = config["inputs"][0]["name"]

    def called_occluded(images: list[np.ndarray], mode: ResizeMode) -> np.ndarray:
        fitted = np.stack(
            [
                fit_image(im, pre["height"], pre["width"], pre["pad_value"], resize=mode)[0]
                for im in images
            ]
        )
        x = (fitted.astype(np.float32) * pre["scale"] - pre["mean"]) / pre["std"]
        logits = session.run(None, {name: x.transpose(0, 3, 1, 2).astype(np.float32)})[0]
        return logits.argmax(1) != 0

    crops = raw_crops()
    parts = split_identities(builtin_faces(), seed=0)
    held = sorted(int(i) for s in ("val", "test") for i in parts[s].identities if i < len(crops))
    aligned = list(builtin_faces().images)
    figures: dict = {"raw_crops": len(crops), "held_out_raw_crops": len(held)}
    for mode in MODES:
        clean = called_occluded(crops, mode)
        figures[mode] = {
            "clean_called_occluded": float(clean.mean()),
            "clean_called_occluded_held_out": float(clean[held].mean()),
            "aligned_called_occluded": float(called_occluded(aligned, mode).mean()),
        } | {
            f"{occluder}_called_occluded": float(
                called_occluded([black_rows(c, *rows) for c in crops], mode).mean()
            )
            for occluder, rows in OCCLUDERS.items()
        }
    print(json.dumps(figures, indent=1))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1) + "\n")
    return figures


if __name__ == "__main__":
    main()
