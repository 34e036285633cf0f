"""Checkpoints rebuild their network from the file alone and never unpickle code."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from models.common.checkpoint import config_from_dict, read_checkpoint, rebuild, save_checkpoint

pytestmark = pytest.mark.train


@dataclass(frozen=True)
class Inner:
    widths: tuple[int, ...] = (4, 8)  # a tuple, which asdict keeps and JSON makes a list


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)  # a nested config, which asdict makes a dict
    classes: int = 3


class Tiny(nn.Module):
    def __init__(self, config: Outer) -> None:
        super().__init__()
        self.config = config
        self.fc = nn.Linear(config.inner.widths[-1], config.classes)


def test_round_trip_rebuilds_config_and_weights(tmp_path: Path) -> None:
    net = Tiny(Outer(Inner((2, 5)), classes=4))
    save_checkpoint(tmp_path / "net.pt", net, epoch=7)
    ckpt = read_checkpoint(tmp_path / "net.pt")
    back = rebuild(ckpt, Tiny, Outer)
    assert back.config == net.config
    assert isinstance(back.config.inner.widths, tuple)
    assert torch.equal(back.fc.weight, net.fc.weight)
    assert ckpt["epoch"] == 7
    assert not back.training


def test_lists_from_json_become_tuples_and_missing_fields_default() -> None:
    config = config_from_dict(Outer, {"inner": {"widths": [1, 2, 3]}})
    assert config == Outer(Inner((1, 2, 3)), classes=3)


def test_unknown_field_is_refused() -> None:
    with pytest.raises(TypeError):
        config_from_dict(Outer, {"classes": 2, "depth": 9})


class Payload:
    """Anything pickled by reference to code: what weights_only refuses to load."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled code ran",))


def test_pickled_code_is_not_run(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"config": {}, "state_dict": {}, "extra": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        read_checkpoint(path)
