"""Every held-out measure of a committed occlusion version: ``python -m models.occlusion.measure``.

    python -m models.occlusion.measure --version 1 \
        --out models/repository/occlusion/1/measured-held-out.json

The export writes six test figures into config.json and the rest only into the card. This
rebuilds the validation and test sets from the training command the version's config.json
records (``training.command``, parsed by ``models.occlusion.train``'s own parser, so the
seed, occluder banks and face split are those of the run), measures the served graph on
both with ``models.occlusion.evaluate`` (the threshold chosen on validation, applied to
test, as the export does) and writes every figure, so each number in the card can be
checked against a file and a command. It also reports verification against truly
occluded copies only (``*_occluded``): the export's verification pairs include the clean
third of the "occluded" copies.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from models.occlusion.export import REPOSITORY, held_out_sets, measure, onnx_predict
from models.occlusion.train import parse_args

# The training command's words before its options: "python -m models.occlusion.train".
COMMAND_PREFIX = 3


def train_config_of(config: dict) -> dict:
    """The training configuration a version's ``config.json`` records, as the checkpoint
    held it (``asdict`` of ``TrainConfig``), rebuilt from ``training.command``."""
    words = shlex.split(config["training"]["command"])
    if words[:COMMAND_PREFIX] != ["python", "-m", "models.occlusion.train"]:
        raise SystemExit(f"not an occlusion training command: {config['training']['command']}")
    return asdict(parse_args(words[COMMAND_PREFIX:]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repository", type=Path, default=REPOSITORY)
    p.add_argument("--version", required=True)
    p.add_argument("--out", type=Path, default=None, help="write the figures here (JSON)")
    a = p.parse_args(argv)
    version_dir = a.repository / "occlusion" / a.version
    config = json.loads((version_dir / "config.json").read_text())
    train_config = train_config_of(config)
    grid = config["decode"]["grid"]
    if grid["rows"] != grid["cols"]:
        raise SystemExit(f"a square pattern grid is measured, not {grid}")
    sets = held_out_sets(train_config)
    figures = measure(onnx_predict(version_dir / "model.onnx"), sets, int(grid["rows"]))
    report = {
        "version": a.version,
        "command": "python -m models.occlusion.measure "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "training_command": config["training"]["command"],
        **figures,
    }
    print(json.dumps(figures["test"], indent=1))
    if a.out:
        a.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
