"""Fused vs semantic-only vs contour-only on held-out garments drawn unlike training.

    python -m models.gender.shift --run runs/gender-v5 --out runs/gender-v5/shift.json \
        --plot runs/gender-v5/shift.png

The seed's case for contour features is robustness: a garment's outline survives changes
of background, colour and scale that the semantic features may have learned to rely on.
The held-out split of training has none of that, so this draws the same test garments
(same split, seed and count, so ``none`` reproduces the run's test accuracy) under each of
a fixed list of shifts, chosen before any result was seen, and reports every one:

- ``photo_backgrounds``: every garment over a photograph (training: half of them);
- ``small_garments``: the longer side 35-55 % of the image (training: 55-90 %);
- ``rotated``: up to 20 degrees either way (training: 8);
- ``strong_colour``: every image colour-transformed, channel shifts up to 80 (training:
  at most 30 % of images, shifts up to 40);
- ``low_resolution``: downscaled to half size and back (bilinear), as a small product
  thumbnail would be.

Added later, each with its question and rule written before it ran (beside version 5's
card):

- ``portrait_letterboxed``: a 3:4 portrait photo (backdrop extended above and below) as
  the service letterboxes it: the garment at 3/4 size between grey bars; on the garments
  clear of the top and bottom rows, with ``square_clear_rows`` (the same garments as
  drawn) as its baseline;
- ``portrait_edge_padded``: the same with bars repeating the image's edge, not grey;
- ``landscape_letterboxed`` / ``landscape_edge_padded``: 4:3 landscapes (backdrop extended
  left and right), on the garments clear of the side columns, with
  ``square_clear_sides`` as their baseline.

Per shift: each variant's accuracy, overall, per garment type and per backdrop (plain
light, plain coloured, photograph), and, fused vs semantic-only, how many garments only one
of them gets right with the exact McNemar p-value. ``--contour-f N`` adds the contour
network's ODS F against the exact outlines per backdrop, on N garments of each and on the
fused model's errors. ``--images 10000 --seed 100 --shifts none`` measures the same
checkpoints on a larger held-out set of fresh garments (the run never saw seed 100's test
garments). ``--baseline models/repository/gender/5/checkpoint.pt`` adds a served version's
model on the same garments, paired with the run's fused model (is a new run ahead of what
is served?). ``--pairs portrait_letterboxed:portrait_edge_padded`` compares two renderings
of the same garments paired, per variant (garments only one gets right, exact McNemar p,
per backdrop): how version 6's edge-repeating bars were judged against grey ones.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.common.paired import mcnemar_exact, only_right, paired_difference_ci95
from models.common.plots import plot_bars
from models.gender.data import (
    BACKDROPS,
    ColourAugmentConfig,
    GarmentConfig,
    Garments,
    as_non_square,
    colour_augment,
    generate,
)
from models.gender.evaluate import f_measure
from models.gender.net import GenderNet, load_checkpoint
from models.gender.train import TrainConfig, contour_maps, predict, shared_pooled_features

# The test split's seed offset in training (models.gender.train.gender_data): the same
# garments as the run's held-out test, so only the shift differs.
TEST_SEED_OFFSET = 32
VARIANT_ORDER = ("fused", "semantic", "contour")
# With --baseline, a served version's fused model measured on the same garments: whether a
# new run's fused model is ahead of or behind what is served, paired.
BASELINE = "baseline"
COLUMNS = (*VARIANT_ORDER, BASELINE)


@dataclass(frozen=True)
class Shift:
    garments: dict[str, object]  # GarmentConfig fields that differ from training's
    transform: Callable[[np.ndarray, int], np.ndarray] | None = None  # (N, S, S, 3) uint8
    # Which garments the shift applies to (N,) bool; None = all. Shifts with the same keep
    # and seed measure the same garments, so they can be compared pairwise.
    keep: Callable[[Garments], np.ndarray] | None = None


# A portrait shop photograph's aspect (height / width): 3:4 is the common product format.
PORTRAIT_ASPECT = 4 / 3
# Rows at the top and bottom a garment may not touch for the portrait shift: its backdrop
# is extended by repeating the edge row, which must be backdrop.
CLEAR_ROWS = 2


def _clear_of_top_and_bottom(garments: Garments) -> np.ndarray:
    """Garments whose outline stays off the top and bottom CLEAR_ROWS rows."""
    edges = np.concatenate(
        [garments.outlines[:, :CLEAR_ROWS], garments.outlines[:, -CLEAR_ROWS:]], axis=1
    )
    return ~edges.any(axis=(1, 2))


def _clear_of_left_and_right(garments: Garments) -> np.ndarray:
    """Garments whose outline stays off the left and right CLEAR_ROWS columns."""
    return _clear_of_top_and_bottom(
        replace(garments, outlines=garments.outlines.transpose(0, 2, 1))
    )


def _aspect_shift(aspect: float, edge_pad: bool) -> Callable[[np.ndarray, int], np.ndarray]:
    """Every image made an ``aspect`` photo as the service sees it (``as_non_square``)."""

    def transform(images: np.ndarray, seed: int) -> np.ndarray:
        return np.stack([as_non_square(image, aspect, edge_pad) for image in images])

    return transform


_portrait_letterboxed = _aspect_shift(PORTRAIT_ASPECT, edge_pad=False)


def _strong_colour(images: np.ndarray, seed: int) -> np.ndarray:
    return colour_augment(images, seed, ColourAugmentConfig(share=1.0, max_shift=80))[0]


def _low_resolution(images: np.ndarray, seed: int) -> np.ndarray:
    size = images.shape[1]
    out = np.empty_like(images)
    for i, image in enumerate(images):
        small = Image.fromarray(image).resize((size // 2, size // 2), Image.Resampling.BILINEAR)
        out[i] = np.asarray(small.resize((size, size), Image.Resampling.BILINEAR))
    return out


SHIFTS: dict[str, Shift] = {
    "none": Shift({}),
    "photo_backgrounds": Shift({"photo_background": 1.0}),
    "small_garments": Shift({"fill": (0.35, 0.55)}),
    "rotated": Shift({"rotation": 20.0}),
    "strong_colour": Shift({}, _strong_colour),
    "low_resolution": Shift({}, _low_resolution),
    # Added after the list above had been measured, with its question and rule written
    # first (measured-portrait-RULE.txt beside version 5's card); its square baseline is the
    # same garments unshifted.
    "square_clear_rows": Shift({}, keep=_clear_of_top_and_bottom),
    "portrait_letterboxed": Shift({}, _portrait_letterboxed, keep=_clear_of_top_and_bottom),
    # measured-edge-pad-RULE.txt: bars that repeat the edge instead of grey, and landscapes.
    "portrait_edge_padded": Shift(
        {}, _aspect_shift(PORTRAIT_ASPECT, edge_pad=True), keep=_clear_of_top_and_bottom
    ),
    "square_clear_sides": Shift({}, keep=_clear_of_left_and_right),
    "landscape_letterboxed": Shift(
        {}, _aspect_shift(1 / PORTRAIT_ASPECT, edge_pad=False), keep=_clear_of_left_and_right
    ),
    "landscape_edge_padded": Shift(
        {}, _aspect_shift(1 / PORTRAIT_ASPECT, edge_pad=True), keep=_clear_of_left_and_right
    ),
}


def shifted_set(name: str, count: int, seed: int, base: GarmentConfig) -> Garments:
    """The test garments under shift ``name`` (images transformed where the shift says so;
    outlines, types and backdrops as drawn)."""
    shift = SHIFTS[name]
    garments = generate(count, "test", seed, replace(base, **shift.garments))
    if shift.keep is not None:
        kept = shift.keep(garments)
        garments = Garments(
            *(getattr(garments, f.name)[kept] for f in fields(Garments))  # same field order
        )
    if shift.transform is not None:
        garments = replace(garments, images=shift.transform(garments.images, seed + 1))
    return garments


def contour_f_by_backdrop(
    nets: dict[str, GenderNet], garments: Garments, right: dict[str, np.ndarray], limit: int
) -> dict[str, dict]:
    """ODS F of the run's contour network (its variants share one frozen network; the fused
    one's is taken) against the garments' exact outlines, per backdrop: on the first
    ``limit`` garments with that backdrop, and on the fused model's errors there (are its
    errors where its contour network loses the outline?)."""
    contour = nets["fused"] if "fused" in nets else next(iter(nets.values()))
    out: dict[str, dict] = {}
    for backdrop in BACKDROPS:
        where = np.flatnonzero(garments.backdrops == backdrop)
        entry: dict[str, float] = {"images": int(min(limit, len(where)))}
        chosen = {"all": where[:limit]}
        if "fused" in right:
            chosen["fused_errors"] = where[~right["fused"][where]]
        for part, idx in chosen.items():
            if len(idx) == 0:
                continue
            maps = contour_maps(contour.contour, garments.images[idx])
            entry[part] = f_measure(maps, garments.outlines[idx].astype(bool))["ods_f"]
            entry[f"{part}_images"] = len(idx)
        out[backdrop] = entry
    return out


def per_group(
    right: dict[str, np.ndarray], groups: np.ndarray, names: Sequence[str]
) -> dict[str, dict]:
    """Per group name: its image count and each variant's accuracy there (``right``: per
    variant, ``(N,)`` bool correct; ``groups``: ``(N,)`` str group of each image)."""
    return {
        name: {"images": int((groups == name).sum())}
        | {v: float(r[groups == name].mean()) for v, r in right.items()}
        for name in names
    }


def evaluate_shifts(
    run: Path,
    count: int,
    seed: int,
    shifts: tuple[str, ...] = tuple(SHIFTS),
    contour_f_images: int = 0,
    fill: tuple[float, float] = GarmentConfig.fill,
    baseline: Path | None = None,
    outcomes: dict[str, Outcome] | None = None,
) -> dict[str, dict]:
    """Every shift's accuracy per variant found in ``run`` (a training run's directory, or
    one fused checkpoint such as models/repository/gender/5/checkpoint.pt) and fused vs
    semantic-only, per garment type and per backdrop; with ``contour_f_images`` also the
    contour network's F per backdrop (``contour_f_by_backdrop``). ``fill`` is the
    unshifted garments' size range (the run's ``--fill``); shifts that set it override it.
    ``baseline``: a fused checkpoint (a served version's checkpoint.pt) measured as the
    ``baseline`` variant, with the run's fused model against it, paired. ``outcomes``, when
    given, receives each shift's per-garment results (for ``compare_shifts``)."""
    nets: dict[str, GenderNet] = {}
    # A file is one fused network: a served version's checkpoint.pt.
    paths = {"fused": run} if run.is_file() else {v: run / f"gender-{v}.pt" for v in VARIANT_ORDER}
    for variant, path in paths.items():
        if path.exists():
            net, _ = load_checkpoint(path)
            assert isinstance(net, GenderNet)
            nets[variant] = net.eval()
    if not nets:
        raise SystemExit(f"no gender-*.pt checkpoints in {run}")
    size = next(iter(nets.values())).config.contour.input_size
    if baseline is not None:
        if "fused" not in nets:
            raise SystemExit(f"--baseline needs a fused model in {run}")
        net, _ = load_checkpoint(baseline)
        if not isinstance(net, GenderNet) or net.config.contour.input_size != size:
            raise SystemExit(f"{baseline} is not a gender network for {size}x{size} images")
        nets[BASELINE] = net.eval()
    base = GarmentConfig(size=size, fill=fill)
    results: dict[str, dict] = {}
    for name in shifts:
        garments = shifted_set(name, count, seed, base)
        images, kinds = garments.images, garments.kinds
        labels = torch.from_numpy(garments.labels)
        pooled = shared_pooled_features(nets, images)
        right = {
            variant: (predict(net, images, pooled[variant]) == labels).numpy()
            for variant, net in nets.items()
        }
        entry: dict = {v: float(r.mean()) for v, r in right.items()}
        if "fused" in right and "semantic" in right:
            only_fused, only_semantic = only_right(right["fused"], right["semantic"])
            entry["fused_minus_semantic"] = entry["fused"] - entry["semantic"]
            entry["fused_only_right"] = only_fused
            entry["semantic_only_right"] = only_semantic
            entry["mcnemar_p"] = mcnemar_exact(only_fused, only_semantic)
            # A list, as JSON gives it back.
            entry["fused_minus_semantic_ci95"] = list(
                paired_difference_ci95(only_fused, only_semantic, len(labels))
            )
        if BASELINE in right:
            only_fused, only_baseline = only_right(right["fused"], right[BASELINE])
            entry["fused_vs_baseline"] = {
                "checkpoint": str(baseline),
                "fused_minus_baseline": entry["fused"] - entry[BASELINE],
                "fused_only_right": only_fused,
                "baseline_only_right": only_baseline,
                "mcnemar_p": mcnemar_exact(only_fused, only_baseline),
                "fused_minus_baseline_ci95": list(
                    paired_difference_ci95(only_fused, only_baseline, len(labels))
                ),
            }
        # Where the errors are: per garment type (blouses and women's trousers are the
        # types cut like menswear 10 % of the time, so about 0.9 is their ceiling).
        entry["per_kind"] = per_group(right, kinds, sorted(set(kinds.tolist())))
        # And per backdrop: the errors of version 5 were mostly over plain coloured
        # backdrops and photographs, where the outline is harder to separate.
        entry["per_backdrop"] = per_group(right, garments.backdrops, BACKDROPS)
        if contour_f_images:
            entry["contour_f"] = contour_f_by_backdrop(nets, garments, right, contour_f_images)
        results[name] = entry
        if outcomes is not None:
            outcomes[name] = Outcome(right, garments.labels, garments.backdrops)
        print(name, json.dumps(entry), flush=True)
    return results


@dataclass(frozen=True)
class Outcome:
    """One shift's per-garment results: per variant ``(N,)`` bool correct, and each
    garment's label and backdrop (to check that two shifts saw the same garments)."""

    right: dict[str, np.ndarray]
    labels: np.ndarray
    backdrops: np.ndarray


def compare_shifts(outcomes: dict[str, Outcome], first: str, second: str) -> dict[str, dict]:
    """Per variant, ``second`` against ``first`` on the same garments (two renderings of one
    set, such as grey and edge-repeating letterbox bars): accuracies, how many garments only
    one of them gets right, the exact McNemar p, and the accuracies per backdrop."""
    a, b = outcomes[first], outcomes[second]
    if not (np.array_equal(a.labels, b.labels) and np.array_equal(a.backdrops, b.backdrops)):
        raise ValueError(f"{first} and {second} are not the same garments; no pairing")
    compared = {}
    for variant in a.right.keys() & b.right.keys():
        right_a, right_b = a.right[variant], b.right[variant]
        only_a, only_b = only_right(right_a, right_b)
        compared[variant] = {
            first: float(right_a.mean()),
            second: float(right_b.mean()),
            "difference": float(right_b.mean() - right_a.mean()),
            f"{first}_only_right": only_a,
            f"{second}_only_right": only_b,
            "mcnemar_p": mcnemar_exact(only_a, only_b),
            "per_backdrop": per_group({first: right_a, second: right_b}, a.backdrops, BACKDROPS),
        }
    return compared


def table(results: dict[str, dict]) -> str:
    """A markdown table of ``evaluate_shifts``' results."""
    variants = [v for v in COLUMNS if v in next(iter(results.values()))]
    lines = [
        "| shift | " + " | ".join(variants) + " | fused - semantic | only fused / only "
        "semantic right | McNemar p |",
        "|---" * (len(variants) + 4) + "|",
    ]
    for name, r in results.items():
        accuracies = " | ".join(f"{r[v]:.4f}" for v in variants)
        if "mcnemar_p" in r:
            pair = (
                f"{100 * r['fused_minus_semantic']:+.2f} pt | "
                f"{r['fused_only_right']} / {r['semantic_only_right']} | {r['mcnemar_p']:.2g}"
            )
        else:
            pair = "- | - | -"
        lines.append(f"| {name} | {accuracies} | {pair} |")
    return "\n".join(lines)


def kind_table(entry: dict) -> str:
    """A markdown table of one shift's accuracy per garment type and variant."""
    variants = [v for v in COLUMNS if v in entry]
    lines = [
        "| garment type | images | " + " | ".join(variants) + " |",
        "|---" * (len(variants) + 2) + "|",
    ]
    for kind, r in entry["per_kind"].items():
        accuracies = " | ".join(f"{r[v]:.4f}" for v in variants)
        lines.append(f"| {kind} | {r['images']} | {accuracies} |")
    return "\n".join(lines)


def backdrop_table(entry: dict) -> str:
    """A markdown table of one shift's accuracy per backdrop and variant, with the contour
    network's F there when it was measured."""
    variants = [v for v in COLUMNS if v in entry]
    f = entry.get("contour_f", {})
    extra = " | contour F, all / fused errors" if f else ""
    lines = [
        "| backdrop | images | " + " | ".join(variants) + extra + " |",
        "|---" * (len(variants) + 2 + bool(f)) + "|",
    ]
    for backdrop, r in entry["per_backdrop"].items():
        accuracies = " | ".join(f"{r[v]:.4f}" for v in variants)
        cell = ""
        if f:
            b, nan = f[backdrop], float("nan")
            cell = f" | {b.get('all', nan):.3f} / {b.get('fused_errors', nan):.3f}"
            cell += f" ({b.get('all_images', 0)} / {b.get('fused_errors_images', 0)} images)"
        lines.append(f"| {backdrop} | {r['images']} | {accuracies}{cell} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--run",
        required=True,
        help="a models.gender.train output directory, or a served version's checkpoint.pt "
        "(measured as the fused variant)",
    )
    p.add_argument("--images", type=int, default=TrainConfig().test_images)
    p.add_argument("--seed", type=int, default=TrainConfig().seed, help="the run's --seed")
    p.add_argument("--shifts", nargs="+", choices=tuple(SHIFTS), default=list(SHIFTS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--contour-f",
        type=int,
        default=0,
        help="also the contour network's ODS F against exact outlines per backdrop, on this "
        "many garments of each and on the fused model's errors",
    )
    p.add_argument(
        "--fill",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=list(GarmentConfig.fill),
        help="unshifted garments' longer side as a share of the image (the run's --fill)",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="also measure this fused checkpoint (a served version's checkpoint.pt) on the "
        "same garments, paired with the run's fused model",
    )
    p.add_argument(
        "--pairs",
        nargs="+",
        default=[],
        metavar="FIRST:SECOND",
        help="shifts that render the same garments two ways, compared paired per variant "
        "(e.g. portrait_letterboxed:portrait_edge_padded); both must be in --shifts",
    )
    p.add_argument("--out", default=None, help="write the results here as JSON")
    p.add_argument("--plot", default=None, help="draw accuracy per shift and variant (PNG)")
    a = p.parse_args(argv)
    pairs = [tuple(pair.split(":", 1)) for pair in a.pairs]
    for pair in pairs:
        if len(pair) != 2 or not set(pair) <= set(a.shifts):
            p.error(f"--pairs {':'.join(pair)}: give FIRST:SECOND, both among --shifts")
    if a.threads:
        torch.set_num_threads(a.threads)
    outcomes: dict[str, Outcome] = {}
    results = evaluate_shifts(
        Path(a.run),
        a.images,
        a.seed + TEST_SEED_OFFSET,
        tuple(a.shifts),
        a.contour_f,
        (a.fill[0], a.fill[1]),
        None if a.baseline is None else Path(a.baseline),
        outcomes,
    )
    paired = {
        f"{first}:{second}": compare_shifts(outcomes, first, second) for first, second in pairs
    }
    print(table(results))
    for name, compared in paired.items():
        print(f"{name}, paired: {json.dumps(compared)}")
    for name, entry in results.items():
        if "fused_vs_baseline" in entry:
            print(f"{name}, fused vs baseline: {json.dumps(entry['fused_vs_baseline'])}")
    for name, entry in results.items():
        print(f"\n{name}, per garment type:\n{kind_table(entry)}")
        print(f"\n{name}, per backdrop:\n{backdrop_table(entry)}")
    written = results | ({"pairs": paired} if paired else {})
    if a.out:
        Path(a.out).write_text(json.dumps(written, indent=1))
    if a.plot:
        variants = [v for v in COLUMNS if v in results[a.shifts[0]]]
        plot_bars(
            Path(a.plot),
            list(results),
            {v: [r[v] for r in results.values()] for v in variants},
            title="Gender variants on held-out garments under shifts",
        )
    return written


if __name__ == "__main__":
    main()
