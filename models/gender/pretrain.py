"""Pretrain the gender model's semantic CNN on Fashion-MNIST (real clothing, MIT licence).

    python -m models.gender.pretrain --out runs/gender-fmnist [--images 30000] [--epochs 2]
    python -m models.gender.train ... --semantic-init runs/gender-fmnist/semantic-pretrained.pt

Seed 003 fuses contour features with the features of a semantic (appearance) network that
is normally pretrained elsewhere; no licensed ImageNet backbone can be had here, so this is
the one real stand-in: a semantic-only GenderNet classifies the ten Fashion-MNIST item types
(Debian package ``dataset-fashion-mnist``), each grey 28x28 item scaled up onto a 128x128
canvas in a random colour over a random plain backdrop, sized like the generated garments.
Only its semantic CNN is carried over (``--semantic-init``): the fusion convs and the
classifier are trained afresh for female/male.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from models.attention.data import load_fashion_mnist
from models.gender.data import GarmentConfig
from models.gender.net import GenderNet, GenderNetConfig, save_checkpoint
from models.gender.train import accuracy, to_tensor

FASHION_CLASSES = 10  # Fashion-MNIST's item types


@dataclass(frozen=True)
class PretrainConfig:
    out: str = "runs/gender-fmnist"
    images: int = 30000  # training items drawn from Fashion-MNIST's training split
    test_images: int = 2000  # items of its test split, for the record
    epochs: int = 2
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 5e-4
    seed: int = 0
    threads: int | None = 2
    size: int = 128  # canvas side: the gender model's input
    semantic_widths: tuple[int, ...] = GenderNetConfig().semantic_widths  # must match training


def canvases(
    items: np.ndarray, rng: np.random.Generator, size: int, fill: tuple[float, float]
) -> np.ndarray:
    """``(N, 28, 28)`` grey items on black -> ``(N, size, size, 3)`` uint8: each item scaled
    so its side is a ``fill`` share of the canvas, placed at random, tinted with a random
    colour (its grey level as opacity) over a random plain backdrop."""
    out = np.empty((len(items), size, size, 3), np.uint8)
    for i, item in enumerate(items):
        side = max(1, round(size * rng.uniform(*fill)))
        alpha = np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR), np.float32)
        alpha = (alpha / 255.0)[..., None]  # (side, side, 1)
        backdrop = rng.integers(0, 256, 3).astype(np.float32)
        colour = rng.integers(0, 256, 3).astype(np.float32)
        canvas = np.broadcast_to(backdrop, (size, size, 3)).copy()
        y, x = rng.integers(0, size - side + 1, 2)
        patch = canvas[y : y + side, x : x + side]
        canvas[y : y + side, x : x + side] = patch * (1.0 - alpha) + colour * alpha
        out[i] = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    return out


def pretrain_net(
    config: PretrainConfig,
    train_set: tuple[np.ndarray, np.ndarray],
    test_set: tuple[np.ndarray, np.ndarray],
    progress: bool = True,
) -> tuple[GenderNet, dict]:
    """A semantic-only GenderNet trained to classify ``train_set`` (canvases ``(N, S, S, 3)``
    uint8, labels ``(N,)`` int64 in 0..9); returns it and its history (loss, test
    accuracy per epoch)."""
    torch.manual_seed(config.seed)
    net_config = replace(
        GenderNetConfig(),
        semantic_widths=config.semantic_widths,
        num_classes=FASHION_CLASSES,
        use_contour=False,
    )
    net = GenderNet(net_config)
    net.freeze_contour()  # unused without contour features; keeps it out of the optimiser
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    images, labels = train_set
    steps = len(images) // config.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, config.lr, total_steps=max(1, config.epochs * steps), pct_start=0.15
    )
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    for epoch in range(config.epochs):
        net.train()
        order = torch.randperm(len(images), generator=generator).numpy()
        total = 0.0
        bar = tqdm(range(steps), desc=f"pretrain {epoch + 1}", disable=not progress, leave=False)
        for step in bar:
            rows = order[step * config.batch_size : (step + 1) * config.batch_size]
            logits = net.classify(to_tensor(images[rows]), None)  # (B, 10): no contour pass
            loss = F.cross_entropy(logits, torch.from_numpy(labels[rows]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        test_images, test_labels = test_set
        test = accuracy(net, test_images, None, torch.from_numpy(test_labels))
        history.append({"epoch": epoch + 1, "loss": total / max(1, steps), "test": test})
        loss_mean = history[-1]["loss"]
        tqdm.write(f"pretrain epoch {epoch + 1}: loss {loss_mean:.4f} test {test:.4f}")
    return net.eval(), {"epochs": history}


def pretrain(config: PretrainConfig, progress: bool = True) -> dict:
    """Draw the canvases from Fashion-MNIST, train, write ``semantic-pretrained.pt`` and
    ``pretrain.json`` under ``config.out``; returns the history."""
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.time()
    rng = np.random.default_rng(config.seed)
    fill = GarmentConfig().fill
    train_items, train_labels = load_fashion_mnist("train")
    test_items, test_labels = load_fashion_mnist("test")
    pick = rng.choice(len(train_items), min(config.images, len(train_items)), replace=False)
    test_pick = rng.choice(len(test_items), min(config.test_images, len(test_items)), replace=False)
    train_set = (canvases(train_items[pick], rng, config.size, fill), train_labels[pick])
    test_set = (canvases(test_items[test_pick], rng, config.size, fill), test_labels[test_pick])
    net, history = pretrain_net(config, train_set, test_set, progress)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "semantic-pretrained.pt", net, pretrain=asdict(config))
    history = {"config": asdict(config), **history, "seconds": round(time.time() - started, 1)}
    (out / "pretrain.json").write_text(json.dumps(history, indent=1))
    return history


def parse_args(argv: list[str] | None = None) -> PretrainConfig:
    d = PretrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=d.out)
    for name in ("images", "test_images", "epochs", "batch_size", "seed", "threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--semantic-widths", type=int, nargs="+", default=list(d.semantic_widths))
    a = vars(p.parse_args(argv))
    a["semantic_widths"] = tuple(a["semantic_widths"])
    return PretrainConfig(**a)


def main(argv: list[str] | None = None) -> dict:
    return pretrain(parse_args(argv))


if __name__ == "__main__":
    main()
