"""Write docker/constraints.txt: the exact version of every package the two images install.

    python docker/lock.py            # rewrites docker/constraints.txt (network: PyPI)

``docker/requirements.py`` gives the serving requirements as floors (``fastapi>=0.115``);
built from those alone, an image rebuilt next month could get another ONNX Runtime or CUDA
major version than the one measured here. This resolves both images' requirements with
``pip install --dry-run --report`` (Python 3.11 on linux x86_64: run it on the image's
platform) and pins every package either installs; the Dockerfile installs with
``--constraint docker/constraints.txt``. Standard library only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ONNXRUNTIME = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu[cuda,cudnn]"}
HEADER = """\
# Exact versions for the images' pip installs (docker/Dockerfile: --constraint). Written by
# `python docker/lock.py` (Python {python}, {platform}); rerun it after changing pyproject's
# dependencies. tests/deploy/test_docker.py checks every serving requirement is pinned here
# at a version its specifier allows.
"""


def resolve(onnxruntime: str, work: Path) -> dict[str, str]:
    """name -> version of everything pip would install for the serving requirements."""
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
        ],
        check=True,
    )
    return {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }


def main() -> None:
    pins: dict[str, str] = {}
    for onnxruntime in ONNXRUNTIME.values():
        with tempfile.TemporaryDirectory() as work:
            pins |= resolve(onnxruntime, Path(work))
    header = HEADER.format(python=sys.version.split()[0], platform=sys.platform)
    lines = "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))
    (HERE / "constraints.txt").write_text(header + lines)
    print(f"pinned {len(pins)} packages in {HERE / 'constraints.txt'}")


if __name__ == "__main__":
    main()
