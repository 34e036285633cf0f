"""Checkpoints that rebuild their network from the file alone, as nanoGPT's do.

A checkpoint is a dict: ``config`` (the network's frozen dataclass config as plain
values), ``state_dict`` and whatever the caller adds (normalisation, epoch, the training
config). It is read with ``torch.load(weights_only=True)``: tensors and plain Python values
only, so opening a checkpoint from elsewhere cannot run code in it.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

C = TypeVar("C")
N = TypeVar("N", bound=nn.Module)


class Configured(Protocol):
    """A network built from a dataclass config it keeps as ``.config``."""

    config: Any

    def state_dict(self) -> dict[str, Any]: ...


def save_checkpoint(path: str | Path, net: Configured, **extra: Any) -> None:
    """Write ``net``'s config and weights (and ``extra``) to ``path``."""
    torch.save({"config": asdict(net.config), "state_dict": net.state_dict(), **extra}, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict at ``path``, tensors on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def config_from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Rebuild a dataclass config from ``asdict`` output.

    ``asdict`` (and JSON) turn nested configs into dicts and tuples into lists; both are
    turned back by the field's annotation. A field missing from ``values`` takes its
    default (a checkpoint written before the field existed); an unknown key raises
    ``TypeError`` as the dataclass constructor does.
    """
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        hint = hints.get(key)
        if isinstance(hint, type) and is_dataclass(hint) and isinstance(value, dict):
            value = config_from_dict(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def rebuild(ckpt: dict[str, Any], net_cls: type[N], config_cls: type[Any]) -> N:
    """``net_cls`` built from the checkpoint's config, its weights loaded, in eval mode."""
    net = net_cls(config_from_dict(config_cls, ckpt["config"]))
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()
