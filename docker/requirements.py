"""Print the serving requirements (pyproject's base ``dependencies``), one per line.

``--onnxruntime PACKAGE`` replaces the ``onnxruntime-gpu`` requirement by PACKAGE with the
same version specifier: ``onnxruntime`` for the CPU image (a ~20 MB wheel instead of the
~250 MB GPU one; both provide the ``onnxruntime`` module), ``onnxruntime-gpu[cuda,cudnn]``
for the GPU image (CUDA and cuDNN from NVIDIA's PyPI wheels). Standard library only: it runs
in the image's build stage before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

GPU_PACKAGE = "onnxruntime-gpu"


def serving_requirements(pyproject: Path, onnxruntime: str = GPU_PACKAGE) -> list[str]:
    dependencies: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out = []
    for requirement in dependencies:
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)$", requirement)
        if match and match.group(1).lower().replace("_", "-") == GPU_PACKAGE:
            requirement = f"{onnxruntime}{match.group(3)}"
        out.append(requirement)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--onnxruntime", default=GPU_PACKAGE)
    args = parser.parse_args()
    print("\n".join(serving_requirements(args.pyproject, args.onnxruntime)))


if __name__ == "__main__":
    main()
