"""ONNX export shared by every model, in the manner of timm's export script.

Eval mode, named inputs and outputs, a dynamic batch axis, ``onnx.checker``, a parity check
against PyTorch on a batch, and a ``config.json`` (models/repository/README.md) carrying
everything the service needs to use the graph, with the graph's sha256.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shutil
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from service.imaging import PadMode, ResizeMode

OPSET = 18  # the torch.export-based exporter's native opset; ONNX Runtime >= 1.16 runs it
PARITY_TOLERANCE = 1e-4  # max abs difference between ONNX Runtime and PyTorch outputs
MAX_BATCH = 1024  # upper bound of the dynamic batch axis, far above any batch served
ONNX_TO_V2 = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.BOOL: "BOOL",
}


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``, the one way an export may replace a version folder that exists."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the version folder if it exists (its files are deleted first); without "
        "it an existing version is refused, so a committed release and the files kept beside "
        "its card are never lost to a re-export",
    )


def refuse_existing_version(version_dir: Path, overwrite: bool) -> None:
    """Exit if ``version_dir`` exists and ``overwrite`` is not set.

    A released version's card carries hand-kept sections and evidence files (rule files,
    measurements) that no export writes, and a version is what a client pins, so it must not
    change under the same number. Called before any training or measuring, so a refusal
    costs nothing.
    """
    if version_dir.exists() and not overwrite:
        raise SystemExit(
            f"{version_dir} exists: a released version is not overwritten. Write a new "
            "--version, or to another --repository to compare with it, or pass --overwrite "
            "to replace it."
        )


def read_extra_card(path: str | Path | None) -> str:
    """The hand-written markdown ``--extra-card`` names ("" without one), read before the
    export writes anything: a missing file used to stop it after the graphs and config.json
    were written, leaving a version folder without its card that the service would load."""
    if path is None:
        return ""
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise SystemExit(
            f"--extra-card {path}: {exc.strerror or exc}. It is a hand-written file of the run "
            "(not committed): a released card's closing sections are its text"
        ) from exc


def new_version_dir(repository: Path, name: str, version: str, overwrite: bool) -> Path:
    """Create and return ``repository/name/version``, empty (see ``refuse_existing_version``)."""
    version_dir = repository / name / version
    refuse_existing_version(version_dir, overwrite)
    if version_dir.exists():
        shutil.rmtree(version_dir)
    version_dir.mkdir(parents=True)
    return version_dir


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_onnx(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> onnx.ModelProto:
    """Export ``module`` (eval mode) with axis 0 of every input dynamic; check the graph."""
    module = module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings():
        # torch's exporter trips over its own deprecations; they say nothing about the graph.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # Several inputs share the one batch axis (e.g. feature map + attention map): the
        # exporter notes that it keeps one name for them, which is what is wanted.
        warnings.filterwarnings(
            "ignore", message=r".*shares the same shape constraints", category=UserWarning
        )
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes={name: {0: batch} for name in input_names},
            dynamo=True,
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return model


def check_parity(module: torch.nn.Module, path: Path, inputs: dict[str, torch.Tensor]) -> float:
    """Max abs difference between ONNX Runtime (CPU) and PyTorch over all outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        want = module.eval()(*inputs.values())
    want = want if isinstance(want, tuple | list) else (want,)
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))


def tensor_specs(values: Sequence[onnx.ValueInfoProto]) -> list[dict]:
    """``{"name", "datatype", "shape"}`` with -1 for dynamic axes, as config.json stores."""
    specs = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        specs.append({"name": v.name, "datatype": ONNX_TO_V2[t.elem_type], "shape": shape})
    return specs


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def graph_entry(version_dir: Path, file: str, model: onnx.ModelProto) -> dict:
    """``{"file", "sha256", "inputs", "outputs"}`` of one graph file in ``version_dir``."""
    return {
        "file": file,
        "sha256": sha256(version_dir / file),
        "inputs": tensor_specs(model.graph.input),
        "outputs": tensor_specs(model.graph.output),
    }


def letterbox_preprocess(
    height: int,
    width: int,
    pad_value: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    resize: ResizeMode = "letterbox",
    pad: PadMode = "constant",
) -> dict:
    """config.json's ``preprocess`` block for an RGB NCHW input the service fits to
    ``height x width`` and normalises as ``(x / 255 - mean) / std``: ``resize`` "letterbox"
    (whole image, borders of ``pad_value`` uint8 RGB, or with ``pad`` "edge" the image's
    edge repeated) or "crop" (the input filled, the excess cut off centrally; for a model
    trained only on inputs its content fills)."""
    return {
        "height": height,
        "width": width,
        "resize": resize,
        "pad_value": [int(v) for v in pad_value],
        "pad": pad,
        "scale": 1 / 255,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "color": "RGB",
        "layout": "NCHW",
    }


def write_config(
    version_dir: Path,
    model: onnx.ModelProto | None,
    *,
    name: str,
    task: str,
    preprocess: dict,
    labels: Sequence[str],
    decode: dict,
    metrics: dict,
    training: dict,
    graphs: Mapping[str, tuple[str, onnx.ModelProto]] | None = None,
) -> dict:
    """Write ``config.json`` in ``version_dir``; returns it.

    One graph: ``model`` is ``model.onnx``'s graph (top-level ``file``/``sha256``/
    ``inputs``/``outputs``). Several: ``model`` is None and ``graphs`` maps each graph's
    name to ``(file name, graph)``, written as the ``graphs`` object.
    """
    if (model is None) == (graphs is None):
        raise ValueError("give either one model or graphs")
    if graphs is None:
        assert model is not None
        layout = graph_entry(version_dir, "model.onnx", model)
    else:
        layout = {
            "graphs": {
                graph_name: graph_entry(version_dir, file, graph)
                for graph_name, (file, graph) in graphs.items()
            }
        }
    config = {
        "format": 1,
        "name": name,
        "version": version_dir.name,
        "task": task,
        **layout,
        "preprocess": preprocess,
        "labels": list(labels),
        "decode": decode,
        "metrics": metrics,
        "training": {"git_commit": git_commit(), "date": dt.date.today().isoformat(), **training},
    }
    (version_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config
