"""A new version of a served model from an existing one, its graphs unchanged and one
pre-processing setting changed: ``python -m models.common.rerelease``.

    python -m models.common.rerelease --model gender --from 5 --version 6 --pad edge \
        --note "why, and the measurement that says so"

For a change that needs no training (how the service fits an image into the input), so
that the new behaviour is a new version and the old one stays reproducible. Copies the
source version's graph files (the same bytes: their sha256 in config.json does not
change), writes config.json with the new version number and pre-processing, the source's
labels, decode block, metrics and training record, and a ``released_from`` record (source
version, the change, this command, commit, date), and a MODEL_CARD.md that says what
changed and points to the source's card for the training, data, figures and plots.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import get_args

from models.common.export import git_commit
from service.imaging import PadMode
from service.runtime import CONFIG_FILE, read_config

REPOSITORY = Path("models/repository")
CARD_FILE = "MODEL_CARD.md"


def rerelease(
    repository: Path, model: str, source: str, version: str, pad: str, note: str, command: str
) -> dict:
    """Write ``repository/model/version`` from ``repository/model/source`` with
    ``preprocess.pad = pad``; returns the new config.json."""
    source_dir, target_dir = repository / model / source, repository / model / version
    if target_dir.exists():
        raise SystemExit(f"{target_dir} exists; a released version is not overwritten")
    config = json.loads((source_dir / CONFIG_FILE).read_text())
    parsed = read_config(source_dir)  # validates the source as the service would
    files = [g.file for g in parsed.graph_configs().values()]
    before = config["preprocess"].get("pad", "constant")
    if before == pad:
        raise SystemExit(f"{model} {source} already pads with {pad!r}: nothing would change")
    target_dir.mkdir(parents=True)
    for file in files:
        shutil.copy2(source_dir / file, target_dir / file)
    config["version"] = version
    config["preprocess"] = config["preprocess"] | {"pad": pad}
    config["released_from"] = {
        "version": source,
        "change": f"preprocess.pad: {before} -> {pad}",
        "command": command,
        "git_commit": git_commit(),
        "date": dt.date.today().isoformat(),
        "note": note,
    }
    (target_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    read_config(target_dir)  # and the result
    card = [
        f"# {model}, version {version}",
        "",
        f"Version {source}'s graph{'s' if len(files) > 1 else ''} ({', '.join(files)}: the same "
        f"bytes, sha256 unchanged), served with one pre-processing change: "
        f"`preprocess.pad` {before} -> {pad}. Nothing was trained: the training command, "
        f"data, held-out figures and plots are those of version {source}, in "
        f"[its card](../{source}/{CARD_FILE}); the metrics in config.json are copied "
        "from there.",
        "",
        "Made with:",
        "",
        "```",
        command,
        "```",
        "",
        "## Why",
        "",
        note,
        "",
    ]
    (target_dir / CARD_FILE).write_text("\n".join(card))
    return config


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--model", required=True)
    parser.add_argument("--from", dest="source", required=True, help="the source version")
    parser.add_argument("--version", required=True, help="the new version (a new directory)")
    parser.add_argument(
        "--pad", choices=get_args(PadMode), required=True, help="preprocess.pad of the new one"
    )
    parser.add_argument("--note", required=True, help="why: the card's and config's record")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "models.common.rerelease", *(argv or sys.argv[1:])])
    return rerelease(
        args.repository, args.model, args.source, args.version, args.pad, args.note, command
    )


if __name__ == "__main__":
    main()
