"""Compare attention checkpoints on one common validation set, to choose what to export.

    python -m models.attention.compare runs/attention-v7/best.pt runs/attention-v8/last.pt \\
        --average runs/attention-v7/best.pt,runs/attention-v8/last.pt

Each training run measures its epochs on validation canvases drawn with its own ``--seed``,
and sets of 2000 canvases differ by about a point, so runs cannot be compared by their own
figures. This draws one validation set (``--seed``; the default is what a run with the
default seed validates on) and measures every checkpoint on it, plus optional uniform
weight averages of checkpoints of one architecture (batch-norm statistics re-estimated on
training canvases, as stochastic weight averaging does). Only validation data: the test
split is left for ``models.attention.export``.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from torch import nn

from models.attention.net import AttentionNet, load_checkpoint, save_checkpoint
from models.attention.train import TrainConfig, evaluate, make_split, to_tensor

# Training canvases for re-estimating batch-norm statistics of an averaged network: enough
# for stable means and variances, drawn with a seed no training run uses for its epochs.
BN_CANVASES = 4000
BN_SEED = 777


def average(
    nets: list[AttentionNet], config: TrainConfig, bn_canvases: int = BN_CANVASES
) -> AttentionNet:
    """Uniform average of ``nets``' weights, batch-norm statistics re-estimated on
    ``bn_canvases`` training canvases."""
    net = copy.deepcopy(nets[0])
    state = net.state_dict()
    for name, value in state.items():
        if value.dtype.is_floating_point:
            state[name] = sum(n.state_dict()[name] for n in nets) / len(nets)
    net.load_state_dict(state)
    canvases = make_split(config, "train", bn_canvases, "single", BN_SEED)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over every batch below
    net.train()
    with torch.no_grad():
        for i in range(0, len(canvases), 200):
            net(to_tensor(canvases.images[i : i + 200]))
    return net.eval()


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoints", nargs="*", type=Path)
    p.add_argument("--average", action="append", default=[], help="comma-separated checkpoints")
    p.add_argument("--save-averages", type=Path, default=None, help="directory for averaged .pt")
    p.add_argument("--val-images", type=int, default=TrainConfig().val_images)
    p.add_argument("--val-pairs", type=int, default=TrainConfig().val_pairs)
    p.add_argument("--seed", type=int, default=TrainConfig().seed, help="as train's --seed")
    p.add_argument("--bn-canvases", type=int, default=BN_CANVASES)
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    config = TrainConfig(data_root=a.data_root)
    # The seeds train.py validates a run of --seed with.
    val = make_split(config, "val", a.val_images, "single", a.seed + 1)
    pairs = make_split(config, "val", a.val_pairs, "pair", a.seed + 2)
    results: dict[str, dict[str, float]] = {}
    for path in a.checkpoints:
        results[str(path)] = evaluate(load_checkpoint(path)[0], val, pairs)
        print(str(path), json.dumps(results[str(path)]), flush=True)
    for group in a.average:
        paths = [Path(part) for part in group.split(",")]
        net = average([load_checkpoint(path)[0] for path in paths], config, a.bn_canvases)
        results[group] = evaluate(net, val, pairs)
        print(group, json.dumps(results[group]), flush=True)
        if a.save_averages:
            a.save_averages.mkdir(parents=True, exist_ok=True)
            name = "+".join(path.parent.name + "-" + path.stem for path in paths) + ".pt"
            save_checkpoint(a.save_averages / name, net, averaged_from=[str(p) for p in paths])
    return results


if __name__ == "__main__":
    main()
