from pathlib import Path

import pytest
import torch
from PIL import Image

from patchcore.backbones import BACKBONES, get_backbone_spec, load_backbone
from patchcore.errors import WeightsError
from patchcore.core.preprocessing import Preprocessor
from patchcore.data.offline import texture_photo  # noqa: F401  (scikit-image present)

SKIMAGE_DATA = Path(__import__("skimage").__file__).parent / "data"
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, COFFEE_MUG, CUP = 967, 504, 968


def classify(backbone_name: str, filename: str) -> tuple[int, float]:
    backbone = load_backbone(backbone_name)
    spec = backbone.spec
    image = Image.open(SKIMAGE_DATA / filename).convert("RGB")
    batch = Preprocessor((256, 256), spec.mean, spec.std, center_crop=224)(image)[None]
    with torch.inference_mode():
        probabilities = backbone.module(batch).softmax(dim=1)[0]
    return int(probabilities.argmax()), float(probabilities.max())


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_packaged_lite_checkpoints_classify_real_photos(name: str) -> None:
    cat, cat_probability = classify(name, "chelsea.png")
    assert cat in CAT_CLASSES and cat_probability > 0.3
    coffee, coffee_probability = classify(name, "coffee.png")
    assert coffee in (ESPRESSO, COFFEE_MUG, CUP) and coffee_probability > 0.3


def test_wide_resnet_taps_have_the_papers_shapes() -> None:
    backbone = load_backbone("wide_resnet50_2", weights="random")
    x = torch.zeros(1, 3, 224, 224)
    shapes = {}
    with torch.inference_mode():
        for name, step in backbone.module.stages():
            x = step(x)
            shapes[name] = tuple(x.shape[1:])
    assert shapes["layer2"] == (512, 28, 28)
    assert shapes["layer3"] == (1024, 14, 14)


def test_resnet_without_weights_names_the_ways_to_get_them() -> None:
    with pytest.raises(WeightsError, match="give weights=FILE .command line: --weights FILE.") as raised:
        load_backbone("wide_resnet50_2")
    assert "weights='random'" in str(raised.value)  # the Python argument, as a Python user writes it


def test_weights_file_by_path_round_trips(tmp_path: Path) -> None:
    reference = load_backbone("resnet18", weights="random").module
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_()
    path = tmp_path / "resnet18-custom.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    loaded = load_backbone("resnet18", weights=path)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(reference.eval()(x), loaded.module(x))
    assert loaded.weights_sha256 is not None and len(loaded.weights_sha256) == 64


def test_mismatched_weights_file_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save(load_backbone("resnet18", weights="random").module.state_dict(), path)
    with pytest.raises(WeightsError, match="wrong.pth.*does not match"):
        load_backbone("resnet50", weights=path)


def test_weights_file_that_is_not_torch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth"):
        load_backbone("resnet18", weights=path)


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="nope.pth: weights file not found"):
        load_backbone("resnet18", weights=tmp_path / "nope.pth")


def test_unknown_backbone_lists_the_known_ones() -> None:
    with pytest.raises(WeightsError, match="efficientnet_lite2"):
        get_backbone_spec("vgg99")


@pytest.mark.slow
def test_every_registered_default_tap_exists() -> None:
    for name, spec in BACKBONES.items():
        module = spec.build()
        names = [step_name for step_name, _ in module.stages()]
        assert set(spec.default_layers) <= set(names), name


def reference_dinov2(chunks: int):
    """The official DINOv2 ViT-S/14 (PyPI `dinov2`, the code the hub checkpoints were made with), random weights
    with non-trivial layer scales and class token."""
    from functools import partial

    vision_transformer = pytest.importorskip("dinov2.models.vision_transformer", reason="pip install --no-deps dinov2")
    from dinov2.layers import MemEffAttention, NestedTensorBlock

    torch.manual_seed(0)
    reference = vision_transformer.DinoVisionTransformer(
        img_size=518, patch_size=14, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, init_values=1e-5,
        block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention), block_chunks=chunks).eval()
    for name, parameter in reference.named_parameters():
        if "gamma" in name or "cls_token" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    return reference


@pytest.mark.parametrize("chunks", [0, 4])  # the hub's checkpoints are unchunked; training code chunks blocks
def test_dinov2_patch_tokens_equal_the_official_code_on_a_non_square_image(tmp_path: Path, chunks: int) -> None:
    reference = reference_dinov2(chunks)
    torch.save(reference.state_dict(), tmp_path / "dinov2_vits14_pretrain.pth")
    loaded = load_backbone("dinov2_vits14", tmp_path / "dinov2_vits14_pretrain.pth")  # through the key conversion
    images = torch.randn(2, 3, 14 * 9, 14 * 13)  # 9 x 13 patches: the 37 x 37 embeddings interpolated
    with torch.inference_mode():
        expected = reference.get_intermediate_layers(images, n=[4, 8], reshape=True, norm=False)
        expected_last = reference.forward_features(images)["x_norm_patchtokens"]
        tokens, taps = images, {}
        for name, step in loaded.module.stages():
            tokens = step(tokens)
            taps[name] = loaded.module.feature_map(tokens, images.shape[-2:])
    assert taps["blocks.4"].shape == (2, 384, 9, 13)
    torch.testing.assert_close(taps["blocks.4"], expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(taps["blocks.8"], expected[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(taps["norm"].flatten(2).transpose(1, 2), expected_last, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_dinov2_fits_and_predicts_a_non_square_image_whole_and_tiled() -> None:
    import numpy as np

    from patchcore import PatchCore
    from tests.helpers import paste_defect

    photo = texture_photo("brick")
    good = [photo[y : y + 150, x : x + 230] for y in (0, 160) for x in (0, 240)]
    defect = paste_defect(photo[320:470, 0:230], 40, 60, 40, texture_photo("gravel")[:40, :40])
    for tile_size in (None, 112):
        model = PatchCore(backbone="dinov2_vits14", weights="random", tile_size=tile_size).fit(good)
        assert model.extractor_.grid_stride == 14 and model.preprocessor_.working_size((230, 150)) == (252, 168)
        [prediction] = model.predict([defect])
        assert prediction.anomaly_map.shape == (150, 230)
        assert np.isfinite(prediction.anomaly_map).all() and prediction.score > 0


@pytest.fixture()
def loopback_download_site(tmp_path: Path):
    """A web server on 127.0.0.1 standing in for download.pytorch.org: serves `tmp_path/site`."""
    import functools
    import http.server
    import threading

    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_torch_hub_weights_download_into_a_fresh_cache_and_are_checked(loopback_download_site, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from patchcore.backbones.registry import TORCH_HUB_WEIGHTS, _torch_hub_weights_path
    from patchcore.io.files import file_sha256

    site, address = loopback_download_site
    torch.save(get_backbone_spec("resnet18").build().state_dict(), site / "weights.pth")
    digest = file_sha256(site / "weights.pth")
    (site / f"resnet18-{digest[:8]}.pth").write_bytes((site / "weights.pth").read_bytes())
    (site / "resnet18-00000000.pth").write_bytes((site / "weights.pth").read_bytes())  # a name it does not match
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "fresh_home"))  # no hub/checkpoints folder yet
    spec = dataclasses.replace(get_backbone_spec("resnet18"), torch_hub_url=f"{address}/resnet18-{digest[:8]}.pth")
    path = _torch_hub_weights_path(spec)
    assert path == tmp_path / "fresh_home" / "hub" / "checkpoints" / f"resnet18-{digest[:8]}.pth"
    assert file_sha256(path) == digest
    monkeypatch.setattr("patchcore.backbones.registry.BACKBONES", {"resnet18": spec})
    assert load_backbone("resnet18", TORCH_HUB_WEIGHTS).weights_sha256 == digest  # from the cache, no download
    # A download whose hash differs from its name's is refused and leaves nothing in the cache.
    wrong = dataclasses.replace(spec, torch_hub_url=f"{address}/resnet18-00000000.pth")
    with pytest.raises(WeightsError, match=r"resnet18-00000000.pth: not in torch hub's cache and the download .* "
                                           r"failed \(invalid hash value"):
        _torch_hub_weights_path(wrong)
    assert not (path.parent / "resnet18-00000000.pth").exists()
    # A damaged file already in the cache is named, not loaded.
    path.write_bytes(b"damaged")
    with pytest.raises(WeightsError, match=rf"its SHA-256 does not start with {digest[:8]}"):
        _torch_hub_weights_path(spec)


@pytest.mark.slow
def test_the_anomalydino_preset_builds_a_whole_bank_of_unit_length_vit_tokens() -> None:
    import numpy as np

    from patchcore import PatchCore
    from patchcore.methods import preset_params

    photo = texture_photo("brick")
    model = PatchCore(**preset_params("anomalydino"), weights="random").fit([photo[:200, :300], photo[200:400, :300]])
    assert model.extractor_.layers == ("norm",) and model.preprocessor_.working_size((300, 200)) == (448, 294)
    rows, columns = 294 // 14, 448 // 14
    assert model.memory_bank_.shape == (2 * rows * columns, 384)  # every patch token: no coreset
    np.testing.assert_allclose(np.linalg.norm(model.memory_bank_, axis=1), 1.0, atol=1e-5)
