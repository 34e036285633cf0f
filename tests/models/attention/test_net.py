from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models.attention.net import (
    AttentionNet,
    AttentionNetConfig,
    FeaturesExport,
    PerceptionExport,
    grow_from,
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


def test_a_grown_network_starts_out_computing_what_the_smaller_one_did() -> None:
    torch.manual_seed(0)
    small = AttentionNet(SMALL)
    # Train-mode steps give the batch norms non-trivial running statistics.
    with torch.no_grad():
        for _ in range(3):
            small(torch.randn(8, 3, 64, 64))
    small.eval()
    big = AttentionNet(replace(SMALL, feature_blocks=2, perception_blocks=3))
    new = grow_from(big, small)
    big.eval()
    assert new and all(n.startswith(("features.4.", "perception.2.", "perception.3.")) for n in new)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = small(x), big(x)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    # The new blocks add trainable parameters (they are not the identity for good).
    assert sum(p.numel() for p in big.parameters()) > sum(p.numel() for p in small.parameters())


def test_growing_refuses_other_widths_or_fewer_blocks() -> None:
    small = AttentionNet(replace(SMALL, perception_blocks=2))
    with pytest.raises(ValueError, match="fewer perception_blocks"):
        grow_from(AttentionNet(SMALL), small)
    with pytest.raises(ValueError, match="only the block counts"):
        grow_from(AttentionNet(replace(SMALL, feature_width=24, perception_blocks=2)), small)
