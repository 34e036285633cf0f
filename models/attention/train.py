"""Train the attention model (seed 002, Attention Branch Network) on composed canvases.

    python -m models.attention.train --out runs/attention

Canvases (models/attention/data.py) are generated once per run from Fashion-MNIST and
background photographs, then reused every epoch with random horizontal flips. Then
``python -m models.attention.export`` measures the model on the test split and writes
it into the model repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.attention.data import CanvasConfig, Canvases, box_masks, compose, load_fashion_mnist
from models.attention.loss import abn_loss
from models.attention.net import (
    AttentionNet,
    AttentionNetConfig,
    grow_from,
    load_checkpoint,
    save_checkpoint,
)
from models.common.backgrounds import IMAGENET_MEAN, IMAGENET_STD
from models.common.plots import plot_curves
from models.common.tensors import to_tensor

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/attention"  # run folder: checkpoints, history.json, curves
    train_images: int = 48000  # single-item training canvases (of the 55 000 train items)
    val_images: int = 2000  # single-item validation canvases (items of the last 5 000)
    val_pairs: int = 500  # two-item validation canvases for the correction check
    epochs: int = 8  # length of the one-cycle schedule
    batch_size: int = 128  # canvases per step
    lr: float = 4e-3  # peak learning rate (AdamW)
    weight_decay: float = 5e-4  # AdamW's decoupled weight decay
    # Probability that a training sample's perception branch sees the box of its item
    # (area-averaged to the map grid, as an edited mask is) instead of the model's own map.
    # The loss stays Latt + Lper; it teaches the perception branch the kind of map a
    # person draws. 0 disables it.
    mask_substitution: float = 0.25
    seed: int = 0  # canvas composition and initialisation
    threads: int | None = None  # torch CPU threads (None: torch's default)
    data_root: str | None = None  # Fashion-MNIST folder (None: the Debian package's)
    # Start from this checkpoint's weights instead of from scratch: a second,
    # lower-learning-rate run on freshly composed canvases (another --seed). The network may
    # have more residual blocks than the checkpoint's; the extra ones start as the identity.
    init: str | None = None
    # Compose fresh training canvases (new positions, scales, backgrounds) every epoch
    # instead of reusing one set: with one fixed set the wider network overfits (train
    # loss 0.12 vs validation accuracy 0.91 by epoch 10). Costs ~40 s per epoch.
    recompose: bool = False
    net: AttentionNetConfig = field(default_factory=AttentionNetConfig)  # the network built
    canvas: CanvasConfig = field(default_factory=CanvasConfig)  # how items are placed on photos


def make_split(config: TrainConfig, split: str, count: int, kind: str, seed: int) -> Canvases:
    root = Path(config.data_root) if config.data_root else None
    items, labels = load_fashion_mnist(split, root) if root else load_fashion_mnist(split)
    return compose(items, labels, split, count, kind=kind, seed=seed, config=config.canvas)


@torch.no_grad()
def predict(
    net: AttentionNet,
    images: np.ndarray,
    masks: np.ndarray | None = None,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Probabilities of both heads and the maps; ``masks`` replace the model's maps."""
    net.eval()
    out: dict[str, list[np.ndarray]] = {"attention": [], "perception": [], "maps": []}
    for i in range(0, len(images), batch_size):
        x = to_tensor(images[i : i + batch_size])
        m = None if masks is None else torch.from_numpy(masks[i : i + batch_size])
        o = net(x, attention=m)
        out["attention"].append(o["attention_logits"].softmax(-1).numpy())
        out["perception"].append(o["perception_logits"].softmax(-1).numpy())
        out["maps"].append(o["attention_map"].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def correction_success(net: AttentionNet, pairs: Canvases) -> dict[str, float]:
    """On two-item canvases: how often a mask over item k gives item k's class."""
    grid, size = net.config.map_size, net.config.input_size
    result: dict[str, float] = {}
    for k, name in ((0, "a"), (1, "b")):
        masks = box_masks(pairs.boxes[:, k], size, grid)
        probs = predict(net, pairs.images, masks)["perception"]
        result[f"mask_on_{name}"] = float((probs.argmax(1) == pairs.labels[:, k]).mean())
    return result


def evaluate(net: AttentionNet, val: Canvases, pairs: Canvases) -> dict[str, float]:
    p = predict(net, val.images)
    return {
        "perception_accuracy": float((p["perception"].argmax(1) == val.labels[:, 0]).mean()),
        "attention_accuracy": float((p["attention"].argmax(1) == val.labels[:, 0]).mean()),
        **{f"correction_{k}": v for k, v in correction_success(net, pairs).items()},
    }


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Train; keep the checkpoint with the best validation perception accuracy."""
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    started_all = time.time()
    train_set = make_split(config, "train", config.train_images, "single", config.seed)
    val = make_split(config, "val", config.val_images, "single", config.seed + 1)
    val_pairs = make_split(config, "val", config.val_pairs, "pair", config.seed + 2)
    grid, size = config.net.map_size, config.net.input_size
    train_masks = torch.from_numpy(box_masks(train_set.boxes[:, 0], size, grid))
    train_images = to_tensor(train_set.images)
    train_labels = torch.from_numpy(train_set.labels[:, 0])
    tqdm.write(f"data: {len(train_set)} train canvases in {time.time() - started_all:.0f} s")

    net = AttentionNet(config.net)
    if config.init:
        start, _ = load_checkpoint(config.init)
        if start.config == config.net:
            net.load_state_dict(start.state_dict())
        else:
            try:
                grown = grow_from(net, start)
            except ValueError as error:
                raise SystemExit(f"--init {config.init}: {error}") from None
            tqdm.write(f"grown from {config.init}: {len(grown)} new tensors start as identity")
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(train_set) // config.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.15
    )
    generator = torch.Generator().manual_seed(config.seed)
    command = "python -m models.attention.train " + " ".join(sys.argv[1:])
    history: dict = {"config": _jsonable(config), "command": command, "epochs": []}
    best = -1.0
    for epoch in range(config.epochs):
        if config.recompose and epoch > 0:
            fresh = make_split(
                config, "train", config.train_images, "single", config.seed + 1000 * epoch
            )
            train_masks = torch.from_numpy(box_masks(fresh.boxes[:, 0], size, grid))
            train_images = to_tensor(fresh.images)
            train_labels = torch.from_numpy(fresh.labels[:, 0])
        net.train()
        order = torch.randperm(len(train_set), generator=generator)
        sums = {"attention": 0.0, "perception": 0.0, "total": 0.0}
        started = time.time()
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
        )
        for step in bar:
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            x, y, box = train_images[idx], train_labels[idx], train_masks[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            box = torch.where(flip[:, None, None, None], box.flip(3), box)
            o = net.extract(x)
            used = o["attention_map"]
            if config.mask_substitution > 0:
                swap = torch.rand(len(idx), generator=generator) < config.mask_substitution
                used = torch.where(swap[:, None, None, None], box, used)
            o["perception_logits"] = net.perceive(o["features"], used)
            terms = abn_loss(o, y)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            sched.step()
            for k, v in terms.items():
                sums[k] += v.item()
            bar.set_postfix(loss=f"{terms['total'].item():.3f}")
        metrics = evaluate(net, val, val_pairs)
        row = {
            "epoch": epoch + 1,
            "seconds": round(time.time() - started, 1),
            **{f"train_{k}": v / steps_per_epoch for k, v in sums.items()},
            "val": metrics,
        }
        history["epochs"].append(row)
        tqdm.write(
            f"epoch {epoch + 1}: loss {row['train_total']:.3f} "
            + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            + f" ({row['seconds']} s)"
        )
        # Both checkpoints carry the run's command, so either can be exported with its
        # provenance (models.attention.export.training_commands).
        extra = {
            "epoch": epoch + 1,
            "mean": MEAN,
            "std": STD,
            "train_config": _jsonable(config) | {"command": command},
        }
        save_checkpoint(out / "last.pt", net, **extra)
        if metrics["perception_accuracy"] > best:
            best = metrics["perception_accuracy"]
            save_checkpoint(out / "best.pt", net, **extra)
        history["seconds"] = round(time.time() - started_all, 1)
        (out / "history.json").write_text(json.dumps(history, indent=1))
    plot_training(history, out / "loss_curves.png")
    return history


def plot_training(history: dict, path: Path) -> None:
    rows = history["epochs"]
    plot_curves(
        path,
        [r["epoch"] for r in rows],
        {
            "train: Latt": [r["train_attention"] for r in rows],
            "train: Lper": [r["train_perception"] for r in rows],
            "train: L = Latt + Lper": [r["train_total"] for r in rows],
        },
        {
            "val: perception accuracy": [r["val"]["perception_accuracy"] for r in rows],
            "val: attention-branch accuracy": [r["val"]["attention_accuracy"] for r in rows],
            "val: correction, mask on A": [r["val"]["correction_mask_on_a"] for r in rows],
            "val: correction, mask on B": [r["val"]["correction_mask_on_b"] for r in rows],
        },
        title="Attention model training (seed 002)",
    )


def _jsonable(config: TrainConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    d, n = TrainConfig(), AttentionNetConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=d.out)
    p.add_argument("--data-root", default=None, help="Fashion-MNIST directory (idx .gz files)")
    for name in ("train_images", "val_images", "val_pairs", "epochs", "batch_size", "seed"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--init", default=None, help="checkpoint to start from (same widths, <= blocks)")
    for name in ("lr", "weight_decay", "mask_substitution"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    for name in (
        "stem_width",
        "feature_width",
        "perception_width",
        "feature_blocks",
        "perception_blocks",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(n, name))
    p.add_argument("--synthesis", choices=("multiply", "residual"), default=n.synthesis)
    p.add_argument(
        "--recompose", action="store_true", help="compose fresh training canvases every epoch"
    )
    a = p.parse_args(argv)
    return TrainConfig(
        out=a.out,
        train_images=a.train_images,
        val_images=a.val_images,
        val_pairs=a.val_pairs,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        weight_decay=a.weight_decay,
        mask_substitution=a.mask_substitution,
        seed=a.seed,
        threads=a.threads,
        data_root=a.data_root,
        init=a.init,
        recompose=a.recompose,
        net=AttentionNetConfig(
            stem_width=a.stem_width,
            feature_width=a.feature_width,
            perception_width=a.perception_width,
            feature_blocks=a.feature_blocks,
            perception_blocks=a.perception_blocks,
            synthesis=a.synthesis,
        ),
    )


def main(argv: list[str] | None = None) -> dict:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
