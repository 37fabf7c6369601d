"""The ONNX graph against the library: same scores and maps on real images, within 1e-4."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

onnxruntime = pytest.importorskip("onnxruntime")

from patchcore.apps.cli import main  # noqa: E402
from patchcore.apps.export import check_against_pytorch, export_onnx, predict_with_onnx  # noqa: E402
from patchcore.io.images import load_image  # noqa: E402
from patchcore.core.patchcore import PatchCore  # noqa: E402
from patchcore.baselines.padim import Padim  # noqa: E402


@pytest.fixture(scope="module")
def exact_model(fitted_model, tmp_path_factory) -> PatchCore:
    """The session model with exact search, on the CPU: the graph searches exactly and runs on onnxruntime's
    CPU provider, so the library's reference does the same (a GPU's TF32 convolutions differ by ~1e-3)."""
    model = PatchCore.load(fitted_model.save(tmp_path_factory.mktemp("export") / "model"), device="cpu")
    model.index = "exact"
    model.reindex()
    return model


@pytest.fixture(scope="module")
def exported(exact_model, tmp_path_factory) -> Path:
    return export_onnx(exact_model, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.mark.slow
def test_onnx_scores_and_maps_match_the_library_on_real_images(exact_model, exported: Path, good_test_crops,
                                                              defect_crop) -> None:
    path = exported
    images = [*good_test_crops[:3], defect_crop[0]]
    batch = torch.stack([exact_model.preprocessor_(load_image(image)) for image in images])
    predictions = exact_model.predict(images)  # the crops are the training size: the graph's input, whole
    library_scores = np.array([p.score for p in predictions])
    library_maps = np.stack([p.anomaly_map for p in predictions])

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, maps = session.run(None, {"images": batch.numpy()})
    assert scores.shape == (4,) and maps.shape == (4, 128, 128)
    np.testing.assert_allclose(scores, library_scores, atol=1e-4, rtol=0)
    np.testing.assert_allclose(maps, library_maps, atol=1e-4, rtol=0)
    assert scores[3] > scores[:3].max()  # the defect is still the highest
    one, _ = session.run(None, {"images": batch[3:].numpy()})  # another batch size, same graph
    np.testing.assert_allclose(one, scores[3:], atol=1e-5)
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata["backbone"] == "efficientnet_lite0" and '"input_width": 128' in metadata["preprocessing"]
    assert metadata["search"] == "exact" and '"kind": "exact"' in metadata["library_index"]
    assert "within 1e-4" in metadata["search_contract"]


def test_export_leaves_the_fitted_model_as_it_was(exact_model, exported: Path) -> None:
    assert exported.is_file()
    # The graph is built from a copy: the model keeps its device and channels-last layout.
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in exact_model.extractor_.parameters()
               if w.ndim == 4)
    assert {p.device for p in exact_model.extractor_.parameters()} == {exact_model.device_}


@pytest.mark.slow
def test_export_refuses_a_bank_over_the_limit_and_other_methods(exact_model, train_crops, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="more than the 100 an exported graph may hold"):
        export_onnx(exact_model, tmp_path / "m.onnx", max_bank_rows=100)
    assert not list(tmp_path.iterdir())  # nothing half-written
    padim = Padim(holdout_fraction=0.0).fit(train_crops[:4])
    with pytest.raises(ValueError, match="only PatchCore models export"):
        export_onnx(padim, tmp_path / "p.onnx")


@pytest.mark.slow
def test_export_command_writes_and_checks_the_graph(fitted_model, tmp_path: Path) -> None:
    model_dir = fitted_model.save(tmp_path / "model")
    files_before = {p.name for p in model_dir.iterdir()}
    result = CliRunner().invoke(main, ["export", str(model_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert {p.name for p in model_dir.iterdir()} - files_before == {"model.onnx"}  # no .tmp.data beside it
    assert "warning" not in result.output.lower() and "torchvision" not in result.output
    assert '"kind": "ivf"' in onnxruntime.InferenceSession(str(model_dir / "model.onnx")).get_modelmeta(
        ).custom_metadata_map["library_index"]  # the contract names the index the library itself uses
    gaps = [float(found) for found in re.findall(r"\d\.\d+e[+-]\d+", result.output)]
    assert len(gaps) == 2 and max(gaps) < 1e-4, result.output


@pytest.mark.slow
def test_a_tiled_model_with_a_region_of_interest_exports_the_per_tile_graph(train_crops, good_test_crops,
                                                                          defect_crop, tmp_path: Path) -> None:
    """128 px images in 64 px tiles (9 of them), the right quarter outside the region of interest: the
    file, run from its metadata alone, gives the library's scores and maps."""
    region = np.ones((128, 128), dtype=bool)
    region[:, 96:] = False  # on the 8 px patch grid, so the library's pixel mask and the graph's agree exactly
    model = PatchCore(coreset_ratio=0.1, threshold_folds=2, image_size=128, tile_size=64, index="exact",
                      roi_mask=region, device="cpu").fit(train_crops[:12])
    assert len(model.preprocessor_.tiles((128, 128))) == 9
    path = export_onnx(model, tmp_path / "tiled.onnx")
    metadata = onnxruntime.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    assert metadata["graph"] == "tile" and '"stride": 8' in metadata["tiling"]

    outside = defect_crop[0].copy()
    outside[40:68, 100:128] = 255  # a white square outside the region: no effect on either side
    images = [*good_test_crops[:2], defect_crop[0], outside]
    predictions = model.predict(images)
    onnx_results = predict_with_onnx(path, images, batch_size=4)
    np.testing.assert_allclose([s for s, _ in onnx_results], [p.score for p in predictions], atol=1e-4, rtol=0)
    for (_, onnx_map), prediction in zip(onnx_results, predictions):
        assert np.array_equal(np.isnan(onnx_map), np.isnan(prediction.anomaly_map))
        assert np.isnan(onnx_map[:, 96:]).all() and not np.isnan(onnx_map[:, :96]).any()
        np.testing.assert_allclose(onnx_map[:, :96], prediction.anomaly_map[:, :96], atol=1e-4, rtol=0)
    scores = [s for s, _ in onnx_results]
    assert scores[2] > 1.2 * max(scores[:2])  # the defect inside the region is found
    assert abs(scores[3] - scores[2]) < 1e-4  # the square outside it changes nothing
    assert max(check_against_pytorch(model, path).values()) < 1e-4
    result = CliRunner().invoke(main, ["export", str(model.save(tmp_path / "model")), "--no-check"], catch_exceptions=False)
    assert result.exit_code == 0 and "a per-tile graph (9 tile(s) per image, a region of interest)" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("tile_size", [None, 128])
def test_onnx_maps_come_back_at_each_images_own_size(train_crops, good_test_crops, defect_crop, tile_size,
                                                      tmp_path: Path) -> None:
    """120 px images (not a multiple of the stride) at a 256 px working size, whole (the image graph) or in
    tiles (the per-tile graph): the maps are the images' size and lie where the library's do."""
    crop = np.s_[4:124, 4:124]
    model = PatchCore(coreset_ratio=0.1, threshold_folds=2, tile_size=tile_size, index="exact",
                      device="cpu").fit([image[crop] for image in train_crops[:12]])
    assert model.preprocessor_.working_size((120, 120)) == (256, 256)
    path = export_onnx(model, tmp_path / "model.onnx")
    graph = onnxruntime.InferenceSession(str(path)).get_modelmeta().custom_metadata_map["graph"]
    assert graph == ("image" if tile_size is None else "tile")
    images = [good_test_crops[0][crop], defect_crop[0][crop]]
    for (score, onnx_map), prediction in zip(predict_with_onnx(path, images), model.predict(images)):
        assert onnx_map.shape == prediction.anomaly_map.shape == (120, 120)
        assert score == pytest.approx(prediction.score, abs=1e-4)
        # Tiles: the library's own mapping code, so equal; whole: the graph's 256 px map resized, so close.
        tolerance = 1e-4 if tile_size else 0.01 * float(prediction.anomaly_map.max())
        np.testing.assert_allclose(onnx_map, prediction.anomaly_map, atol=tolerance, rtol=0)


@pytest.mark.slow
def test_a_dinov2_model_exports_and_matches_the_library(train_crops, defect_crop, tmp_path: Path) -> None:
    """A ViT at a working size of 14 px multiples (not 16) through the image graph: the file's metadata carries
    the multiple, so onnxruntime's inputs are the library's."""
    crop = np.s_[4:124, 4:124]
    model = PatchCore(backbone="dinov2_vits14", weights="random", coreset_ratio=0.25, threshold_folds=2,
                      index="exact", device="cpu").fit([image[crop] for image in train_crops[:6]])
    assert model.preprocessor_.working_size((120, 120)) == (252, 252)
    path = export_onnx(model, tmp_path / "model.onnx")
    assert max(check_against_pytorch(model, path).values()) < 1e-4
    [(score, onnx_map)] = predict_with_onnx(path, [defect_crop[0][crop]])
    [prediction] = model.predict([defect_crop[0][crop]])
    assert score == pytest.approx(prediction.score, abs=1e-4)
    np.testing.assert_allclose(onnx_map, prediction.anomaly_map, atol=0.01 * float(prediction.anomaly_map.max()), rtol=0)


@pytest.mark.slow
def test_a_cosine_model_exports_unit_length_features(train_crops, good_test_crops, defect_crop, tmp_path: Path) -> None:
    model = PatchCore(distance="cosine", coreset_ratio=0.1, image_size=128, index="exact", threshold_folds=2,
                      device="cpu").fit(train_crops[:12])
    path = export_onnx(model, tmp_path / "cosine.onnx")
    images = [good_test_crops[0], defect_crop[0]]
    batch = torch.stack([model.preprocessor_(load_image(image)) for image in images])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, _ = session.run(None, {"images": batch.numpy()})
    np.testing.assert_allclose(scores, [p.score for p in model.predict(images)], atol=1e-4, rtol=0)
    assert scores.max() <= 2.0  # distances between unit vectors
