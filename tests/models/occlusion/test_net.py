"""Network shapes, masking on/off, checkpoints, and the loss terms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.occlusion.loss import CosFace, occlusion_loss
from models.occlusion.net import (
    OcclusionExport,
    OcclusionNet,
    OcclusionNetConfig,
    load_checkpoint,
    save_checkpoint,
)

TINY = OcclusionNetConfig(widths=(4, 8, 8, 16), pattern_width=4, embedding_dim=12)


def test_shapes() -> None:
    net = OcclusionNet(TINY).eval()
    out = net(torch.randn(3, 3, 112, 96))
    assert TINY.feature_size == (7, 6)
    assert out["pattern_logits"].shape == (3, 226)
    assert out["embedding"].shape == (3, 12)
    assert out["mask"].shape == out["features"].shape == (3, 16, 7, 6)
    assert out["mask"].min() >= 0 and out["mask"].max() <= 1


def test_masking_multiplies_the_features_and_can_be_switched_off() -> None:
    torch.manual_seed(0)
    on = OcclusionNet(TINY).eval()
    off = OcclusionNet(OcclusionNetConfig(**{**TINY.__dict__, "masking": False})).eval()
    off.load_state_dict(on.state_dict())
    x = torch.randn(2, 3, 112, 96)
    a, b = on(x), off(x)
    assert torch.allclose(a["pattern_logits"], b["pattern_logits"])
    assert not torch.allclose(a["embedding"], b["embedding"])
    assert torch.allclose(on.embedding_head(a["features"] * a["mask"]), a["embedding"], atol=1e-6)


def test_export_wrapper_normalises_the_embedding() -> None:
    logits, emb = OcclusionExport(OcclusionNet(TINY).eval())(torch.randn(4, 3, 112, 96))
    assert logits.shape == (4, 226)
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)


def test_checkpoint_rebuilds_the_net(tmp_path: Path) -> None:
    net = OcclusionNet(TINY).eval()
    save_checkpoint(tmp_path / "c.pt", net, step=3)
    again, ckpt = load_checkpoint(tmp_path / "c.pt")
    assert again.config == TINY and ckpt["step"] == 3
    x = torch.randn(1, 3, 112, 96)
    assert torch.equal(net(x)["embedding"], again(x)["embedding"])


def test_cosface_margin_raises_the_loss_of_the_true_class() -> None:
    emb = torch.randn(5, 12)
    target = torch.arange(5)
    head = CosFace(12, 5)
    with torch.no_grad():
        head.weight.copy_(emb)  # every embedding on its own class centre: cos = 1
    no_margin = CosFace(12, 5, m=0.0)
    no_margin.load_state_dict(head.state_dict())
    assert head(emb, target) > no_margin(emb, target)


def test_loss_terms_and_gradients_reach_both_heads() -> None:
    net = OcclusionNet(TINY).train()
    cosface = CosFace(12, 4)
    out = net(torch.randn(6, 3, 112, 96))
    pattern = torch.tensor([0, 1, 5, 225, 30, 0])
    teacher = torch.randn(6, 12)
    identity = torch.tensor([0, 1, 2, 3, 0, 1])
    terms = occlusion_loss(out, pattern, identity, cosface, teacher, pattern_weight=0.5)
    assert set(terms) == {"cosface", "distill", "recognition", "pattern", "total"}
    assert terms["total"].item() == pytest.approx(
        (terms["recognition"] + 0.5 * terms["pattern"]).item()
    )
    cos = torch.nn.functional.cosine_similarity(out["embedding"], teacher, dim=1)
    assert terms["distill"].item() == pytest.approx((1 - cos).mean().item(), rel=1e-5)
    assert terms["pattern"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(out["pattern_logits"], pattern).item(), rel=1e-5
    )
    terms["total"].backward()
    assert net.pattern_head[-1].weight.grad.abs().sum() > 0
    assert net.embedding_head[3].weight.grad.abs().sum() > 0
    assert net.mask_decoder[-1].weight.grad.abs().sum() > 0
    assert cosface.weight.grad is not None


def test_loss_without_teacher_or_identities() -> None:
    net = OcclusionNet(TINY).eval()
    out = net(torch.randn(2, 3, 112, 96))
    terms = occlusion_loss(out, torch.tensor([0, 3]), torch.tensor([0, 0]), None, None)
    assert terms["cosface"].item() == 0 and terms["distill"].item() == 0
    assert terms["total"].item() == pytest.approx(terms["pattern"].item())
