"""Write docker/constraints.txt: the exact version of every package the two images install.

    python docker/lock.py            # rewrites docker/constraints.txt (network: PyPI)
    python docker/lock.py --help     # this text; resolves and writes nothing

``docker/requirements.py`` gives the serving requirements as floors (``fastapi>=0.115``);
built from those alone, an image rebuilt next month could get another ONNX Runtime or CUDA
major version than the one measured here. This resolves both images' requirements with
``pip install --dry-run --report`` (Python 3.11 on linux x86_64: run it on the image's
platform) and pins every package either installs; the Dockerfile installs with
``--constraint docker/constraints.txt``. The CPU image's ``onnxruntime`` is pinned to the
version the GPU image's ``onnxruntime-gpu`` resolves to (the package the development venv,
the tests and every benchmark run), even when PyPI has a newer CPU-only release: both
images then serve with the ONNX Runtime that was measured. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ONNXRUNTIME = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu[cuda,cudnn]"}
GPU_DISTRIBUTION = "onnxruntime-gpu"
HEADER = """\
# Exact versions for the images' pip installs (docker/Dockerfile: --constraint). Written by
# `python docker/lock.py` (Python {python}, {platform}); rerun it after changing pyproject's
# dependencies. tests/deploy/test_docker.py checks every serving requirement is pinned here
# at a version its specifier allows.
"""


def resolve(onnxruntime: str, work: Path, constraints: str = "") -> dict[str, str]:
    """name -> version of everything pip would install for the serving requirements, within
    ``constraints`` (pip constraint-file lines)."""
    (work / "constraints.txt").write_text(constraints)
    requirements = work / "requirements.txt"
    requirements.write_text(
        subprocess.run(
            [sys.executable, str(HERE / "requirements.py"), "--onnxruntime", onnxruntime],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    report = work / "report.json"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"),
            *("--quiet", "--report", str(report), "--requirement", str(requirements)),
            *("--constraint", str(work / "constraints.txt")),
        ],
        check=True,
    )
    return {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: no options yet, but ``--help`` answers without resolving or writing."""
    parser = argparse.ArgumentParser(
        prog="python docker/lock.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        pins = resolve(ONNXRUNTIME["gpu"], Path(work))
    same_release = f"{ONNXRUNTIME['cpu']}=={pins[GPU_DISTRIBUTION]}\n"
    with tempfile.TemporaryDirectory() as work:
        pins |= resolve(ONNXRUNTIME["cpu"], Path(work), same_release)
    header = HEADER.format(python=sys.version.split()[0], platform=sys.platform)
    lines = "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))
    (HERE / "constraints.txt").write_text(header + lines)
    print(f"pinned {len(pins)} packages in {HERE / 'constraints.txt'}")


if __name__ == "__main__":
    main()
