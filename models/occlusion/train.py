"""Train the occlusion model (seed 001) on real faces with synthetic occluders.

    python -m models.occlusion.train --out runs/occlusion --threads 1
    python -m models.occlusion.train --out runs/occlusion-nomask --no-masking --threads 1

Faces: the built-in real faces (models/occlusion/faces.py) or ``--faces DIR``, an image
folder with one sub-folder per identity; identities are split train/val/test, and the
occluder sprites come from split-specific photographs, so validation never sees training
faces or occluders. Batches are generated fresh every step (models/occlusion/data.py).
``python -m models.occlusion.export`` then measures the test split and writes the model
repository version.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.common.plots import plot_curves
from models.occlusion.data import SynthConfig, Synthesizer, fixed_set
from models.occlusion.evaluate import evaluate
from models.occlusion.faces import (
    DLIB_PROBLEM,
    FaceBank,
    builtin_faces,
    load_image_folder,
    split_identities,
)
from models.occlusion.loss import CosFace, occlusion_loss
from models.occlusion.net import OcclusionNet, OcclusionNetConfig, save_checkpoint
from models.occlusion.occluders import sprite_bank


@dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/occlusion"  # run folder: checkpoints, history.json, curves
    faces: str | None = None  # image folder (one sub-folder per identity); None: built-in
    steps: int = 1200  # optimiser steps (each a fresh batch of synthesised occlusions)
    batch_size: int = 128  # occluded faces per step
    lr: float = 3e-3  # peak learning rate (AdamW)
    weight_decay: float = 5e-4  # AdamW's decoupled weight decay
    pattern_weight: float = 1.0  # lambda of the pattern classification error
    distill_weight: float = 1.0  # weight of the teacher term inside the recognition error
    train_sprites: int = 1600  # occluder sprites drawn for training (train photos' textures)
    val_sprites: int = 200  # occluder sprites for validation (the val photos' textures)
    val_per_face: int = 60  # fixed augmented copies of each validation face
    eval_every: int = 150  # steps between validations (the best one is kept)
    seed: int = 0  # sprites, synthesis and initialisation
    threads: int | None = None  # torch CPU threads (None: torch's default)
    # Stop (after an evaluation) once this many minutes have passed; None: run all steps.
    time_limit: float | None = None
    # Stop (after an evaluation) at this step; reproduces a run the time limit cut short.
    stop_after_step: int | None = None
    net: OcclusionNetConfig = field(default_factory=OcclusionNetConfig)  # the network built
    synth: SynthConfig = field(default_factory=SynthConfig)  # how occluders are drawn on faces


def load_faces(config: TrainConfig) -> FaceBank:
    if DLIB_PROBLEM:
        print(f"WARNING: {DLIB_PROBLEM}; no teacher embedding either", file=sys.stderr)
    return load_image_folder(Path(config.faces)) if config.faces else builtin_faces()


def torch_predict(net: OcclusionNet):
    """``evaluate.Predict`` over the PyTorch model in eval mode."""

    @torch.no_grad()
    def predict(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = net.eval()(torch.from_numpy(x))
        return out["pattern_logits"].numpy(), out["embedding"].numpy()

    return predict


def selection_score(m: dict) -> float:
    """Validation score the best checkpoint is chosen by: pattern and embedding together."""
    return (m["pattern_exact"] + m["mean_iou_occluded"] + m["verify_auc"]) / 3


def train(config: TrainConfig, command: str | None = None) -> dict:
    """Train; ``command`` is the shell command recorded in the checkpoints (the CLI's own)."""
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    splits = split_identities(load_faces(config), seed=config.seed)
    train_faces = splits["train"]
    # Identities of the training split renumbered 0..n-1 for the CosFace classifier.
    ids, train_ids = np.unique(train_faces.identities, return_inverse=True)
    train_faces = FaceBank(
        train_faces.images,
        train_ids.astype(np.int64),
        train_faces.teacher,
        train_faces.sources,
        train_faces.aligned,
    )
    synth = Synthesizer(
        train_faces, sprite_bank("train", config.train_sprites, config.seed)[0], config.synth
    )
    val_synth = Synthesizer(
        splits["val"], sprite_bank("val", config.val_sprites, config.seed)[0], config.synth
    )
    val = fixed_set(val_synth, config.val_per_face, seed=config.seed + 1)
    print(
        f"faces: train {len(train_faces)} ({len(ids)} identities), val {len(splits['val'])}, "
        f"test {len(splits['test'])}; "
        f"teacher {'on' if train_faces.teacher is not None else 'off'}; "
        f"val samples {len(val.pattern)}; {time.time() - started:.0f} s",
        flush=True,
    )

    net = OcclusionNet(config.net)
    cosface = CosFace(config.net.embedding_dim, len(ids))
    params = list(net.parameters()) + list(cosface.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, config.lr, total_steps=config.steps, pct_start=0.1
    )
    g = torch.Generator().manual_seed(config.seed)
    command = command or "python -m models.occlusion.train (called from Python; see config)"
    history: dict = {
        "config": json.loads(json.dumps(asdict(config))),
        "command": command,
        "evals": [],
    }
    sums: dict[str, float] = {}
    best, seen = -1.0, 0
    for step in range(1, config.steps + 1):
        net.train()
        b = synth.batch(config.batch_size, g)
        o = net(b.occluded)
        terms = occlusion_loss(
            o,
            b.pattern,
            b.identity,
            cosface,
            b.teacher,
            config.pattern_weight,
            config.distill_weight,
        )
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        sched.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        seen += 1
        out_of_time = (
            config.time_limit is not None and time.time() - started > config.time_limit * 60
        ) or (config.stop_after_step is not None and step >= config.stop_after_step)
        if step % config.eval_every == 0 or step == config.steps or out_of_time:
            m = evaluate(torch_predict(net), val, config.net.grid)
            row = {
                "step": step,
                "seconds": round(time.time() - started, 1),
                **{f"train_{k}": v / seen for k, v in sums.items()},
                "val": m,
            }
            sums, seen = {}, 0
            history["evals"].append(row)
            print(
                f"step {step}: loss {row['train_total']:.3f} (pattern {row['train_pattern']:.3f}) "
                f"val exact {m['pattern_exact']:.3f} iou {m['mean_iou_occluded']:.3f} "
                f"occ {m['occluded_vs_not']:.3f} cos {m['cos_clean_vs_occluded']:.3f} "
                f"auc {m['verify_auc']:.3f} ({row['seconds']} s)",
                flush=True,
            )
            extra = {
                "step": step,
                "val": m,
                "train_config": history["config"] | {"command": command},
            }
            save_checkpoint(out / "last.pt", net, **extra)
            if selection_score(m) > best:
                best = selection_score(m)
                save_checkpoint(out / "best.pt", net, **extra)
            history["seconds"] = round(time.time() - started, 1)
            (out / "history.json").write_text(json.dumps(history, indent=1))
            if out_of_time:
                history["stopped_early_at_step"] = step
                (out / "history.json").write_text(json.dumps(history, indent=1))
                break
    plot_training(history, out / "loss_curves.png")
    return history


def plot_training(history: dict, path: Path) -> None:
    rows = history["evals"]
    plot_curves(
        path,
        [r["step"] for r in rows],
        {
            "train: recognition (CosFace + distillation)": [r["train_recognition"] for r in rows],
            "train: pattern CE": [r["train_pattern"] for r in rows],
            "train: total": [r["train_total"] for r in rows],
        },
        {
            "val: exact pattern": [r["val"]["pattern_exact"] for r in rows],
            "val: mean IoU (occluded)": [r["val"]["mean_iou_occluded"] for r in rows],
            "val: occluded vs not": [r["val"]["occluded_vs_not"] for r in rows],
            "val: cos clean vs occluded": [r["val"]["cos_clean_vs_occluded"] for r in rows],
            "val: verification AUC": [r["val"]["verify_auc"] for r in rows],
        },
        title="Occlusion model training (seed 001)",
        xlabel="step",
    )


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=d.out)
    p.add_argument("--faces", default=None, help="image folder, one sub-folder per identity")
    for name in (
        "steps",
        "batch_size",
        "train_sprites",
        "val_sprites",
        "val_per_face",
        "eval_every",
        "seed",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--time-limit", type=float, default=None, help="minutes")
    p.add_argument("--stop-after-step", type=int, default=None)
    for name in ("lr", "weight_decay", "pattern_weight", "distill_weight"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--no-masking", action="store_true", help="ablation: features not masked")
    a = p.parse_args(argv)
    return TrainConfig(
        out=a.out,
        faces=a.faces,
        steps=a.steps,
        batch_size=a.batch_size,
        train_sprites=a.train_sprites,
        val_sprites=a.val_sprites,
        val_per_face=a.val_per_face,
        eval_every=a.eval_every,
        seed=a.seed,
        threads=a.threads,
        time_limit=a.time_limit,
        stop_after_step=a.stop_after_step,
        lr=a.lr,
        weight_decay=a.weight_decay,
        pattern_weight=a.pattern_weight,
        distill_weight=a.distill_weight,
        net=OcclusionNetConfig(masking=not a.no_masking),
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    train(parse_args(argv), "python -m models.occlusion.train " + shlex.join(args))


if __name__ == "__main__":
    main()
