import pytest
import torch
import torch.nn.functional as F

from patchcore.backbones import load_backbone
from patchcore.core.features import FeatureExtractor, channel_pooling_matrix
from patchcore.io.images import load_image


@pytest.mark.parametrize("in_channels,out_channels", [(1024, 512), (120, 48), (48, 84), (7, 7), (10, 3)])
def test_channel_pooling_matrix_equals_adaptive_average_pooling(in_channels: int, out_channels: int) -> None:
    x = torch.randn(5, in_channels)
    expected = F.adaptive_avg_pool1d(x[:, None, :], out_channels)[:, 0, :]
    assert torch.allclose(x @ channel_pooling_matrix(in_channels, out_channels), expected, atol=1e-6)


def test_lite2_patch_features_on_the_stride_8_grid() -> None:
    extractor = FeatureExtractor(load_backbone("efficientnet_lite2"), ("blocks.6", "blocks.14"), 3, 168)
    features = extractor(torch.randn(2, 3, 224, 224))
    assert features.shape == (2, 28, 28, 168)
    # The forward pass stops at the deepest tap: blocks 15-20 and the head never run.
    assert extractor.step_names[-1] == "blocks.14"


def test_local_averaging_is_a_3x3_mean_of_the_raw_tap() -> None:
    backbone = load_backbone("efficientnet_lite0")
    raw = FeatureExtractor(backbone, ("blocks.4",), 1, 40)
    smoothed = FeatureExtractor(backbone, ("blocks.4",), 3, 40)
    images = torch.randn(1, 3, 224, 224)
    plain, averaged = raw(images), smoothed(images)
    y, x = 10, 13
    expected = plain[0, y - 1 : y + 2, x - 1 : x + 2].mean(dim=(0, 1))
    assert torch.allclose(averaged[0, y, x], expected, atol=1e-5)


def test_feature_dim_larger_than_the_taps_is_refused() -> None:
    with pytest.raises(ValueError, match="feature_dim must be between 1 and 152"):
        FeatureExtractor(load_backbone("efficientnet_lite0"), ("blocks.4", "blocks.10"), 3, 1024)


def test_unknown_layer_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown layers"):
        FeatureExtractor(load_backbone("efficientnet_lite0"), ("layer2",), 3, 40)


def test_stride_takes_every_second_window_of_the_patch_grid() -> None:
    backbone = load_backbone("efficientnet_lite0")
    dense = FeatureExtractor(backbone, ("blocks.4",), 3, 40)
    strided = FeatureExtractor(backbone, ("blocks.4",), 3, 40, stride=2)
    images = torch.randn(1, 3, 224, 224)
    full, sparse = dense(images), strided(images)
    assert sparse.shape == (1, 14, 14, 40)
    assert torch.allclose(sparse[0, 3, 5], full[0, 6, 10], atol=1e-5)


def test_raw_concatenation_and_global_feature() -> None:
    backbone = load_backbone("efficientnet_lite0")
    extractor = FeatureExtractor(backbone, ("blocks.2", "blocks.4"), 1, None, global_layer="head")
    patches, pooled = extractor.forward_with_global(torch.randn(2, 3, 224, 224))
    assert patches.shape == (2, 56, 56, 24 + 40) and pooled.shape == (2, 1280)


def test_hierarchy_level_names_resolve_per_backbone() -> None:
    from patchcore.backbones import get_backbone_spec, resolve_layers

    lite0, lite2 = get_backbone_spec("efficientnet_lite0"), get_backbone_spec("efficientnet_lite2")
    assert resolve_layers(lite0, ["level2", "level3"]) == lite0.default_layers == ("blocks.4", "blocks.10")
    assert resolve_layers(lite2, ["level1", "blocks.9"]) == ("blocks.3", "blocks.9")
    with pytest.raises(ValueError, match="levels 1 to 4"):
        resolve_layers(lite0, ["level5"])


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_folded_batch_norms_leave_the_features_unchanged(name: str) -> None:
    import copy

    from torch import nn

    from patchcore.backbones import load_backbone
    from patchcore.backbones.fusion import fuse_batchnorm

    weights = None if name.startswith("efficientnet") else "random"
    backbone = load_backbone(name, weights)
    if weights == "random":  # give the norms non-trivial statistics to fold
        generator = torch.Generator().manual_seed(0)
        for module in backbone.module.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    reference = copy.deepcopy(backbone.module).eval()
    fused = fuse_batchnorm(copy.deepcopy(backbone.module))
    assert not any(isinstance(m, nn.BatchNorm2d) for _, step in fused.stages() for m in step.modules())
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, got = images, images
        for (_, plain), (_, folded) in zip(reference.stages(), fused.stages()):
            expected, got = plain(expected), folded(got)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.slow
def test_reduced_precision_features_stay_close_to_float32(train_crops) -> None:
    from patchcore.core.patchcore import PatchCore

    model = PatchCore(image_size=128, coreset_ratio=0.05, precision="bfloat16").fit(train_crops[:4])
    batch = torch.stack([model.preprocessor_(load_image(train_crops[5]))]).to(model.device_)
    reduced = model.extractor_(batch)
    model.extractor_.autocast_dtype = None
    full = model.extractor_(batch)
    assert reduced.dtype == torch.float32
    relative = float((reduced - full).norm() / full.norm())
    assert 1e-6 < relative < 0.05, relative  # bfloat16 keeps ~3 significant digits: close, not identical

