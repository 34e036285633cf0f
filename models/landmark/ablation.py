"""Seed 004 ablation: each improvement switched off in turn, measured on the test split.

    python -m models.landmark.ablation --out runs/ablation

Every variant trains with the same (reduced) budget and seed and is measured on the same
held-out test scenes, so the rows differ only by the switch.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from models.common.plots import plot_bars
from models.landmark.data import LandmarkDataset
from models.landmark.net import load_checkpoint
from models.landmark.train import MEAN, STD, TrainConfig, evaluate, load_data, train

VARIANTS = {
    "all on": {},
    "no missing-label mining": {"mining": False},
    "no centre sampling": {"center_sampling": False},
    "no class similarity": {"similarity": False},
    "all off": {"mining": False, "center_sampling": False, "similarity": False},
}


def _merge(out: Path, name: str, run: dict, command: str, note: str) -> dict:
    """Add one variant to ``out/ablation.json``; variants may run in parallel processes."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "ablation.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = out / "ablation.json"
        result = json.loads(path.read_text()) if path.exists() else {"runs": {}, "commands": []}
        result["runs"][name] = run
        if command not in result["commands"]:
            result["commands"].append(command)
        result["note"] = note
        path.write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/ablation"))
    p.add_argument("--train-images", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads; run variants in parallel processes with 1 each",
    )
    a = p.parse_args(argv)
    base = TrainConfig(
        train_images=a.train_images,
        epochs=a.epochs,
        test_images=a.test_images,
        class_only_epochs=1,
        loc_ramp_epochs=1,
        mine_from_epoch=3,
        mine_every=2,
        threads=a.threads,
    )
    test = LandmarkDataset(load_data(base, "test"), MEAN, STD)
    command = "python -m models.landmark.ablation " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    note = (
        f"Each variant: {a.train_images} generated training scenes (10 % of landmarks "
        f"unlabelled), {a.epochs} epochs, seed {base.seed}; a shorter budget than the committed "
        f"model, so absolute numbers are lower than its own. Test: {a.test_images} held-out scenes."
    )
    for name in a.variants:
        switches = VARIANTS[name]
        cfg = replace(
            base,
            out=str(a.out / name.replace(" ", "_")),
            mining=switches.get("mining", True),
            loss=replace(
                base.loss,
                center_sampling=switches.get("center_sampling", True),
                similarity=switches.get("similarity", True),
            ),
        )
        history = train(cfg)
        net, _ = load_checkpoint(Path(cfg.out) / "best.pt")
        metrics, _ = evaluate(net, test)
        run = {
            "mining": cfg.mining,
            "center_sampling": cfg.loss.center_sampling,
            "similarity": cfg.loss.similarity,
            "test": metrics,
            "best_val_ap": max(r["val"]["average_precision"] for r in history["epochs"]),
        }
        result = _merge(a.out, name, run, command, note)
        print(name, json.dumps(metrics))
    names = [n for n in VARIANTS if n in result["runs"]]
    plot_bars(
        a.out / "ablation.png",
        names,
        {
            "recall @ precision 95%": [
                result["runs"][n]["test"]["recall_at_precision_95"] for n in names
            ],
            "average precision": [result["runs"][n]["test"]["average_precision"] for n in names],
            "class accuracy": [result["runs"][n]["test"]["class_accuracy"] for n in names],
        },
        title="Seed 004 ablation (held-out test split)",
    )
    return result


if __name__ == "__main__":
    main()
