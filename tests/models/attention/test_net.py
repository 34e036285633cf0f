from __future__ import annotations

import pytest
import torch

from models.attention.net import (
    AttentionNet,
    AttentionNetConfig,
    FeaturesExport,
    PerceptionExport,
    load_checkpoint,
    save_checkpoint,
)

SMALL = AttentionNetConfig(stem_width=8, feature_width=16, perception_width=16)


def test_shapes_of_every_output() -> None:
    net = AttentionNet(SMALL).eval()
    with torch.no_grad():
        out = net(torch.randn(3, 3, 64, 64))
    assert out["features"].shape == (3, 16, 16, 16)
    assert out["attention_map"].shape == (3, 1, 16, 16)
    assert out["attention_logits"].shape == (3, 10)
    assert out["perception_logits"].shape == (3, 10)
    assert SMALL.map_size == 16
    m = out["attention_map"]
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0


def test_a_given_map_replaces_the_models_own() -> None:
    torch.manual_seed(0)
    net = AttentionNet(SMALL).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        own = net(image)
        same = net(image, attention=own["attention_map"])
        edited = net(image, attention=torch.zeros(2, 1, 16, 16))
    torch.testing.assert_close(own["perception_logits"], same["perception_logits"])
    assert not torch.allclose(own["perception_logits"], edited["perception_logits"])
    # The attention branch does not depend on the given map.
    torch.testing.assert_close(own["attention_logits"], edited["attention_logits"])


def test_multiply_synthesis_sees_nothing_outside_the_map() -> None:
    """f * M: with M = 0 everywhere, every image gives the same perception logits; a map
    over one half makes the other half irrelevant."""
    torch.manual_seed(0)
    net = AttentionNet(SMALL).eval()
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    zero = torch.zeros(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            net(a, zero)["perception_logits"], net(b, zero)["perception_logits"]
        )
        left = torch.zeros(1, 1, 16, 16)
        left[..., :8] = 1.0  # map columns 0-7 = image columns 0-31
        # Same left part, other right part beyond the features' receptive field (< 16 px).
        c = a.clone()
        c[..., 52:] = b[..., 52:]
        torch.testing.assert_close(
            net(a, left)["perception_logits"], net(c, left)["perception_logits"]
        )


def test_residual_synthesis_keeps_the_features_without_attention() -> None:
    torch.manual_seed(0)
    net = AttentionNet(AttentionNetConfig(**{**SMALL.__dict__, "synthesis": "residual"})).eval()
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    zero = torch.zeros(1, 1, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(
            net(a, zero)["perception_logits"], net(b, zero)["perception_logits"]
        )
    with pytest.raises(ValueError, match="synthesis"):
        AttentionNet(AttentionNetConfig(synthesis="add"))


def test_export_wrappers_compose_to_the_network() -> None:
    torch.manual_seed(0)
    net = AttentionNet(SMALL).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap, amap, aprobs = FeaturesExport(net)(image)
        probs = PerceptionExport(net)(fmap, amap)
        out = net(image)
    torch.testing.assert_close(probs, out["perception_logits"].softmax(-1))
    torch.testing.assert_close(aprobs, out["attention_logits"].softmax(-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))


def test_checkpoint_rebuilds_the_network(tmp_path) -> None:
    net = AttentionNet(SMALL).eval()
    save_checkpoint(tmp_path / "c.pt", net, epoch=3)
    again, ckpt = load_checkpoint(tmp_path / "c.pt")
    assert again.config == SMALL and ckpt["epoch"] == 3
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x)["perception_logits"], again(x)["perception_logits"])
