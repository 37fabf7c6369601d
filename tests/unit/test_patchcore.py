import json
from pathlib import Path

import numpy as np
import pytest

from patchcore.errors import ModelFileError, NotFittedError
from patchcore.core.patchcore import PatchCore


def test_pasted_defect_scores_higher_and_is_located(fitted_model, good_test_crops, defect_crop) -> None:
    image, (top, left, size) = defect_crop
    good_scores = fitted_model.score_samples(good_test_crops)
    prediction = fitted_model.predict([image])[0]
    assert prediction.score > good_scores.max()
    assert prediction.anomaly_map.shape == image.shape
    peak_y, peak_x = np.unravel_index(prediction.anomaly_map.argmax(), prediction.anomaly_map.shape)
    assert top <= peak_y < top + size and left <= peak_x < left + size


def test_fitted_state(fitted_model, train_crops) -> None:
    n_holdout = int(np.ceil(0.1 * len(train_crops)))
    assert fitted_model.n_train_images_ == len(train_crops) - n_holdout
    assert fitted_model.training_size_ == (128, 128) and fitted_model.preprocessor_.image_size == 128  # as asked
    assert fitted_model.memory_bank_.shape == (int(np.ceil(0.1 * fitted_model.n_patches_seen_)), 152)
    assert fitted_model.nominal_scores_.shape == (n_holdout,)


def test_save_load_gives_identical_scores(fitted_model, good_test_crops, defect_crop, tmp_path: Path) -> None:
    images = good_test_crops[:3] + [defect_crop[0]]
    before = fitted_model.predict(images)
    fitted_model.save(tmp_path / "model")
    loaded = PatchCore.load(tmp_path / "model")
    after = loaded.predict(images)
    assert [p.score for p in before] == [p.score for p in after]
    assert all(np.array_equal(a.anomaly_map, b.anomaly_map) for a, b in zip(before, after))
    assert loaded.get_params()["coreset_ratio"] == 0.1
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["backbone"]["name"] == "efficientnet_lite0"
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["model"]  # no staging leftovers


def test_saving_twice_replaces_the_model_whole(fitted_model, tmp_path: Path) -> None:
    fitted_model.save(tmp_path / "model")
    fitted_model.save(tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.fixture()
def saved_model(fitted_model, tmp_path: Path) -> Path:
    return fitted_model.save(tmp_path / "model")


def test_missing_bank_file_is_named(saved_model: Path) -> None:
    (saved_model / "memory_bank.npy").unlink()
    with pytest.raises(ModelFileError, match="memory_bank.npy: missing"):
        PatchCore.load(saved_model)


def test_modified_bank_file_fails_its_checksum(saved_model: Path) -> None:
    path = saved_model / "memory_bank.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        PatchCore.load(saved_model)


def test_other_format_version_is_refused(saved_model: Path) -> None:
    manifest_path = saved_model / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="format version 99"):
        PatchCore.load(saved_model)


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="manifest.json: missing"):
        PatchCore.load(tmp_path)


def test_predict_before_fit() -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        PatchCore().predict([np.zeros((32, 32), dtype=np.uint8)])


@pytest.mark.parametrize(
    "params,message",
    [
        ({"coreset_ratio": 0.0}, "coreset_ratio"),
        ({"sampler": "kmeans"}, "sampler must be one of greedy_coreset, random, learned_proxies, none, got .kmeans."),
        ({"index": "annoy"}, "index must be one of auto, exact"),
        ({"num_neighbours": 0}, "num_neighbours"),
        ({"backbone": "vgg"}, "unknown backbone"),
    ],
)
def test_bad_hyper_parameters_are_refused_at_fit(params: dict, message: str) -> None:
    with pytest.raises(Exception, match=message):
        PatchCore(**params).fit([np.zeros((32, 32), dtype=np.uint8)])


@pytest.mark.slow
def test_random_and_full_banks(train_crops) -> None:
    full = PatchCore(sampler="none", holdout_fraction=0.0).fit(train_crops[:4])
    # 128 px crops, enlarged to 256 px by the working-size rule: 32 x 32 patches at stride 8.
    assert full.preprocessor_.image_size == 256 and full.memory_bank_.shape[0] == 4 * 32 * 32
    sampled = PatchCore(sampler="random", coreset_ratio=0.25, holdout_fraction=0.0).fit(train_crops[:4])
    assert sampled.memory_bank_.shape[0] == 4 * 32 * 32 // 4


@pytest.mark.slow
def test_raw_features_concatenate_every_tapped_channel_and_survive_saving(train_crops, tmp_path: Path) -> None:
    model = PatchCore(feature_dim="raw", coreset_ratio=0.05, holdout_fraction=0.0).fit(train_crops[:4])
    assert model.memory_bank_.shape[1] == 40 + 112  # Lite0's two taps, not pooled to 76 + 76
    loaded = PatchCore.load(model.save(tmp_path / "raw"))
    assert loaded.feature_dim == "raw"
    grid = loaded.patch_features(train_crops[0])
    pooled = PatchCore(feature_dim=152, coreset_ratio=0.05, holdout_fraction=0.0).fit(train_crops[:4])
    pooled_grid = pooled.patch_features(train_crops[0])
    assert grid.shape == pooled_grid.shape == (32 * 32, 152) and not np.allclose(grid, pooled_grid)
    # Lite0's default merge is raw, and a saved default model says so (an old manifest's int still pools).
    default = PatchCore.load(PatchCore(coreset_ratio=0.05, holdout_fraction=0.0).fit(train_crops[:4]).save(tmp_path / "d"))
    assert default.feature_dim == "raw"
    np.testing.assert_array_equal(default.patch_features(train_crops[0]), grid)
    assert PatchCore.load(pooled.save(tmp_path / "pooled")).feature_dim == 152
    with pytest.raises(ValueError, match="feature_dim must be a positive integer, 'raw' or None"):
        PatchCore(feature_dim="wide").fit(train_crops[:4])


def test_a_model_fitted_at_a_width_x_height_size_loads_again(train_crops, defect_crop, tmp_path: Path) -> None:
    model = PatchCore(image_size=(128, 96), coreset_ratio=0.05, holdout_fraction=0.0).fit(train_crops[:6])
    model.save(tmp_path / "model")
    loaded = PatchCore.load(tmp_path / "model")
    assert loaded.image_size == (128, 96)
    assert loaded.predict([defect_crop[0]])[0].score == model.predict([defect_crop[0]])[0].score


def test_decoding_in_threads_gives_the_same_scores_in_the_same_order(fitted_model, image_folder: Path) -> None:
    files = sorted(image_folder.glob("*.png"))
    inline = fitted_model.score_samples(files)
    fitted_model.loader_threads = 3
    try:
        threaded = fitted_model.score_samples(files)
    finally:
        fitted_model.loader_threads = None
    np.testing.assert_array_equal(threaded, inline)


def test_predict_never_waits_for_the_device_per_image(fitted_model, good_test_crops) -> None:
    # A read of one device value (`.item()`, indexing by a tensor) stalls a GPU's queue; predict may read
    # a fixed number per call (the scores), never one per image or tile. Counted on any device.
    from torch.profiler import ProfilerActivity, profile

    def scalar_reads(images: list) -> int:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fitted_model.predict(images)
        return sum(event.count for event in prof.key_averages() if event.key == "aten::_local_scalar_dense")

    assert len(good_test_crops) >= 4
    assert scalar_reads(good_test_crops[:1]) == scalar_reads(good_test_crops[:4]) <= 2


def test_cosine_distance_scores_unit_length_features(train_crops, good_test_crops, defect_crop) -> None:
    model = PatchCore(distance="cosine", coreset_ratio=0.1, holdout_fraction=0.1, image_size=128).fit(train_crops)
    np.testing.assert_allclose(np.linalg.norm(model.memory_bank_, axis=1), 1.0, atol=1e-5)
    good, defect = model.predict([good_test_crops[0], defect_crop[0]])
    assert 0 < good.score < defect.score <= 2.0  # Euclidean distance between unit vectors: sqrt(2 - 2 cos) <= 2
    assert defect.anomaly_map.max() <= 2.0
