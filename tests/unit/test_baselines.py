"""SPADE, PaDiM and ensembles: the same real-data checks as PatchCore, and loading by method."""

from pathlib import Path

import numpy as np
import pytest
import torch

from patchcore.baselines.ensemble import Ensemble
from patchcore.errors import ModelFileError
from patchcore.io.images import load_image
from patchcore.methods import load_model
from patchcore.core.patchcore import PatchCore
from patchcore.baselines.padim import Padim
from patchcore.baselines.spade import Spade


@pytest.fixture(scope="module", params=["spade", "padim"])
def baseline(request, train_crops):
    model = Spade(n_nearest_images=10) if request.param == "spade" else Padim(n_channels=60)
    return model.fit(train_crops)


@pytest.mark.slow
def test_baseline_finds_and_locates_the_pasted_defect(baseline, good_test_crops, defect_crop) -> None:
    image, (top, left, size) = defect_crop
    prediction = baseline.predict([image])[0]
    assert prediction.score > baseline.score_samples(good_test_crops).max()
    peak_y, peak_x = np.unravel_index(prediction.anomaly_map.argmax(), prediction.anomaly_map.shape)
    assert top <= peak_y < top + size and left <= peak_x < left + size


def test_baseline_round_trips_through_load_model(baseline, good_test_crops, defect_crop, tmp_path: Path) -> None:
    images = good_test_crops[:2] + [defect_crop[0]]
    baseline.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert type(loaded) is type(baseline)
    assert [p.score for p in loaded.predict(images)] == [p.score for p in baseline.predict(images)]
    with pytest.raises(ModelFileError, match="not 'patchcore'"):
        PatchCore.load(tmp_path / "model")


def test_padim_gaussians_live_on_the_level1_grid(train_crops) -> None:
    padim = Padim(n_channels=50).fit(train_crops[:12])
    assert padim.feature_grid_ == (64, 64)  # stride 4 on the 128 px crops, enlarged to 256 px by the size rule
    assert padim.means_.shape == (64 * 64, 50)
    assert padim.inverse_covariances_.shape == (64 * 64, 50, 50)
    # 24 + 40 + 112 channels of Lite0's levels 1-3; a seeded subset of them.
    assert padim.channels_.max() < 176 and len(set(padim.channels_.tolist())) == 50


def test_padim_from_one_image_uses_the_epsilon_covariance(train_crops) -> None:
    padim = Padim(n_channels=20, covariance_epsilon=0.5).fit(train_crops[:1])
    np.testing.assert_allclose(padim.inverse_covariances_[0], np.eye(20) / 0.5, rtol=1e-5)


def test_spade_image_score_is_the_mean_distance_to_the_nearest_training_images(train_crops) -> None:
    spade = Spade(n_nearest_images=3, holdout_fraction=0.0).fit(train_crops[:8])
    # A training image's nearest training image is itself (distance 0), then two others.
    batch = torch.stack([spade.preprocessor_(load_image(train_crops[0]))]).to(spade.device_)
    _, pooled = spade.extractor_.forward_with_global(batch)
    distances = np.linalg.norm(spade.train_global_features_ - pooled.cpu().numpy(), axis=1)
    expected = np.sort(distances)[:3].mean()
    assert spade.score_samples([train_crops[0]])[0] == pytest.approx(expected, rel=1e-4)


def test_ensemble_normalises_with_held_out_good_images(train_crops, good_test_crops, defect_crop) -> None:
    ensemble = Ensemble([PatchCore(coreset_ratio=0.1, image_size=128), Padim(n_channels=50, image_size=128)]).fit(train_crops)
    for member, (mean, spread) in zip(ensemble.members, ensemble.score_scales_):
        assert mean == pytest.approx(member.nominal_scores_.mean())
        assert spread == pytest.approx(member.nominal_scores_.std(ddof=1))
    members = [m.score_samples([defect_crop[0]])[0] for m in ensemble.members]
    expected = np.mean([(s - mean) / spread for s, (mean, spread) in zip(members, ensemble.score_scales_)])
    assert ensemble.score_samples([defect_crop[0]])[0] == pytest.approx(expected)
    assert ensemble.score_samples([defect_crop[0]])[0] > ensemble.score_samples(good_test_crops).max()


@pytest.mark.slow
def test_ensemble_needs_nominal_scores(train_crops) -> None:
    with pytest.raises(ValueError, match="held-out"):  # PaDiM has no cross-fit: nothing held out, no scale
        Ensemble([Padim(holdout_fraction=0.0)]).fit(train_crops[:12])


def test_ensemble_maps_are_scaled_by_each_members_nominal_maximum(train_crops, defect_crop) -> None:
    members = [PatchCore(coreset_ratio=0.1, image_size=128), Padim(n_channels=50, image_size=128)]
    ensemble = Ensemble(members).fit(train_crops)
    maps = [m.predict([defect_crop[0]])[0].anomaly_map for m in members]
    expected = np.mean([amap / m.nominal_map_range_[1] for amap, m in zip(maps, members)], axis=0)
    combined = ensemble.predict([defect_crop[0]])[0].anomaly_map
    np.testing.assert_allclose(combined, expected, rtol=1e-5)
    assert combined.min() >= 0  # pixel metrics need non-negative maps


def test_ensemble_outlines_the_defect_at_a_threshold_from_its_members_nominal_peaks(train_crops, defect_crop) -> None:
    members = [PatchCore(coreset_ratio=0.1, image_size=128), PatchCore(coreset_ratio=0.1, image_size=128, patch_size=1)]
    ensemble = Ensemble(members).fit(train_crops)
    bounds = np.mean([m.calibration_.peaks / m.nominal_map_range_[1] for m in members], axis=0)
    np.testing.assert_allclose(ensemble.calibration_.peaks, bounds)
    assert bounds.max() == pytest.approx(1.0, abs=0.2)  # each member's largest nominal peak scales to 1
    image, (top, left, size) = defect_crop
    regions = ensemble.predict([image])[0].regions
    assert len(regions) == 1  # the pasted square, nothing else
    x0, y0, x1, y1 = regions[0].bbox
    assert x0 < left + size and left < x1 and y0 < top + size and top < y1
    assert 0.3 < regions[0].area / size**2 < 4  # about the defect's size, not the whole crop


@pytest.mark.slow
def test_ensemble_saves_as_one_model_directory_and_loads_back(train_crops, good_test_crops, defect_crop,
                                                              tmp_path: Path) -> None:
    members = [PatchCore(coreset_ratio=0.1, image_size=128, patch_size=1), Padim(n_channels=50, image_size=128)]
    ensemble = Ensemble(members).fit(train_crops)
    images = [*good_test_crops[:2], defect_crop[0]]
    before = ensemble.predict(images)
    ensemble.save(tmp_path / "model")
    ensemble.save(tmp_path / "model")  # a second save keeps the first as versions/1, like any model
    assert sorted(p.name for p in (tmp_path / "model" / "versions").iterdir()) == ["1"]
    loaded = load_model(tmp_path / "model")
    assert isinstance(loaded, Ensemble) and [type(m) for m in loaded.members] == [PatchCore, Padim]
    assert loaded.members[0].patch_size == 1 and loaded.manifest_["version"] == 2
    after = loaded.predict(images)
    for old, new in zip(before, after):
        assert new.score == pytest.approx(old.score, rel=1e-5) and new.decision == old.decision
        np.testing.assert_allclose(new.anomaly_map, old.anomaly_map, rtol=1e-5, atol=1e-6)
    assert after[2].score > max(p.score for p in after[:2])
    (tmp_path / "model" / "member1.nominal_scores.npy").write_bytes(b"changed")
    with pytest.raises(ModelFileError, match="member1.nominal_scores.npy"):
        load_model(tmp_path / "model")
