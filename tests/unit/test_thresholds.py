import numpy as np
import pytest

from patchcore.baselines.padim import Padim
from patchcore.core.patchcore import PatchCore
from patchcore.core.thresholds import f1_optimal_threshold, rate_interval, threshold_at_false_alarm_rate
from patchcore.errors import PatchCoreWarning


def test_threshold_flags_at_most_the_rate_of_held_out_good_scores() -> None:
    nominal = np.arange(1.0, 201.0)  # 200 good scores 1..200
    threshold = threshold_at_false_alarm_rate(nominal, 0.05)
    assert threshold.value == 191.0  # 9 of 200 above it = 4.5 %; the next lower score would flag 5.5 %
    assert (nominal > threshold.value).mean() <= 0.05
    assert threshold.normalise(threshold.value) == 0.5
    assert threshold.normalise(191.0 + threshold.nominal_spread) == pytest.approx(1 / (1 + np.exp(-1)))
    assert threshold.normalise(-1e9) == 0.0 and threshold.normalise(1e9) == 1.0
    assert not threshold.is_anomalous(191.0) and threshold.is_anomalous(191.5)


def test_few_held_out_images_put_the_threshold_at_the_highest_one() -> None:
    threshold = threshold_at_false_alarm_rate(np.array([3.0, 1.0, 2.0]), 0.01)
    assert threshold.value == 3.0 and "too few for a tail fit" in threshold.method
    assert threshold_at_false_alarm_rate(np.empty(0), 0.01) is None
    with pytest.raises(ValueError, match="false_alarm_rate must be in"):
        threshold_at_false_alarm_rate(np.ones(3), 0.0)


def test_a_tail_fit_estimates_a_rare_quantile_and_its_interval_holds_on_new_scores() -> None:
    """Gamma-distributed good scores, 40 nominal ones: the 1 % threshold is an estimate from the tail (below the
    highest score where the tail allows), and the false-alarm rate it gives on 100 000 new good scores lies in
    the 95 % interval it states in at least 18 of 20 draws (19 expected)."""
    rng = np.random.default_rng(1)
    below_highest = fitted = covered = 0
    for _ in range(20):
        nominal = 20.0 + rng.gamma(9.0, 1.0, 40)
        threshold = threshold_at_false_alarm_rate(nominal, 0.01)
        fitted += threshold.method.startswith("tail fit")
        below_highest += threshold.value < nominal.max()
        measured = float((20.0 + rng.gamma(9.0, 1.0, 100_000) > threshold.value).mean())
        low, high = threshold.rate_interval
        covered += low <= measured <= high
    assert covered >= 18 and fitted >= 18 and below_highest >= 5


def test_the_interval_of_a_rate_is_clopper_pearsons() -> None:
    assert rate_interval(0, 40) == (0.0, pytest.approx(0.0881, abs=1e-4))  # 1 - 0.025 ** (1 / 40)
    low, high = rate_interval(5, 100)
    assert low == pytest.approx(0.0164, abs=1e-4) and high == pytest.approx(0.1128, abs=1e-4)


def test_a_heavy_or_ill_fitting_tail_falls_back_to_the_highest_score() -> None:
    scores = np.r_[np.ones(30), np.full(10, 1000.0)]  # two clusters: no smooth upper tail
    threshold = threshold_at_false_alarm_rate(scores, 0.01)
    assert threshold.value == 1000.0 and "tail fit rejected" in threshold.method


def test_f1_optimal_threshold_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    # >= 0.4 flags 4 images, 3 defects: precision 3/4, recall 1 -> F1 6/7, the best of all cuts.
    threshold, f1 = f1_optimal_threshold(labels, scores)
    assert threshold == 0.4 and f1 == pytest.approx(6 / 7)
    with pytest.raises(ValueError, match="both good and defective"):
        f1_optimal_threshold(np.zeros(3), scores[:3])


def test_predictions_carry_the_decision_from_held_out_good_images(fitted_model, good_test_crops, defect_crop) -> None:
    threshold = fitted_model.decision_threshold()
    assert threshold.value == fitted_model.nominal_scores_.max()  # 4 held-out images: 1 % -> the highest
    defect = fitted_model.predict([defect_crop[0]])[0]
    assert defect.is_anomalous and defect.threshold == threshold.value and defect.normalised_score > 0.5
    # These good crops come from other rows of the photo than the training ones and score higher than
    # the held-out crops; what must hold is that decision, threshold and normalised score agree.
    for prediction in fitted_model.predict(good_test_crops):
        assert prediction.is_anomalous == (prediction.score > threshold.value)
        assert (prediction.normalised_score > 0.5) == prediction.is_anomalous


def test_changing_the_false_alarm_rate_of_a_fitted_model_moves_the_threshold(fitted_model) -> None:
    scores = np.sort(fitted_model.nominal_scores_)
    try:
        fitted_model.false_alarm_rate = 0.5
        assert fitted_model.decision_threshold().value == np.quantile(scores, 0.5, method="higher")
    finally:
        fitted_model.false_alarm_rate = 0.01


@pytest.mark.slow
def test_cross_fit_scores_each_fold_against_a_bank_without_its_own_patches(brick, train_crops) -> None:
    from patchcore.data.offline import texture_photo

    gravel = texture_photo("gravel")
    gravel_crops = [gravel[y : y + 128, x : x + 128] for y in (0, 128) for x in (0, 128, 256)]
    images = [*train_crops[:6], *gravel_crops]  # two contiguous folds: all brick, then all gravel
    model = PatchCore(coreset_ratio=0.25, threshold_folds=2).fit(images)
    assert model.nominal_source_.startswith("cross-fit") and len(model.nominal_scores_) == len(images)
    assert model.n_train_images_ == len(images)  # nothing held out of the bank
    # Each fold was scored against the other texture only: far above what the full bank gives them.
    full_bank_scores = model.score_samples(images)
    assert (model.nominal_scores_ > 1.5 * full_bank_scores).all()
    assert any("cannot resolve a 1.0% false-alarm rate" in w for w in model.nominal_warnings())


@pytest.mark.slow
def test_without_nominal_scores_there_is_no_decision(train_crops, defect_crop) -> None:
    model = Padim(holdout_fraction=0.0).fit(train_crops[:6])
    prediction = model.predict([defect_crop[0]])[0]
    assert model.decision_threshold() is None
    assert prediction.is_anomalous is None and prediction.normalised_score is None and prediction.score > 0


def test_cross_fit_knows_each_bank_rows_image_when_sizes_are_mixed(train_crops) -> None:
    # Square crops, then a wide image last: its shorter tiles are batched first, so rows arrive out of image order.
    wide = np.tile(train_crops[0], (2, 3))  # 384 x 256, inspected at 128 x 80
    images = [*train_crops[1:5], wide]
    with pytest.warns(PatchCoreWarning, match="3x apart"):  # sizes this far apart are warned about
        model = PatchCore(sampler="none", threshold_folds=5, image_size=128).fit(images)
    counts = np.bincount(model.bank_.origins, minlength=len(images))
    expected = [model._n_patches((image.shape[1], image.shape[0])) for image in images]
    assert expected[-1] != expected[0] and counts.tolist() == expected
    # Each fold is one image here: its rows are exactly the ones its own features gave.
    assert np.array_equal(model.memory_bank_[model.bank_.origins == 4], model.patch_features(wide))


def test_fit_warns_when_training_images_repeat_images_of_other_folds(brick, tmp_path) -> None:
    """16 crops that share no pixel: nothing repeats. The same with copies of four of them (each copy
    lands in another cross-fit fold): exactly those eight are found, named, warned of and saved."""
    independent = [brick[y : y + 128, x : x + 128] for y in range(0, 512, 128) for x in range(0, 512, 128)]
    model = PatchCore(image_size=128, coreset_ratio=0.1).fit(independent)
    assert model.repeated_images_ == {"checked": 16, "repeating": 0, "folds": "interleaved", "examples": []}
    assert not any("repeat" in warning for warning in model.nominal_warnings())

    copied = PatchCore(image_size=128, coreset_ratio=0.1).fit(independent + independent[:4])
    # Interleaved, the copies meet in other folds: the folds stay contiguous runs, where they meet too.
    assert copied.repeated_images_["repeating"] == 8 and copied.repeated_images_["folds"] == "contiguous"
    assert ["image 0", "image 16"] in copied.repeated_images_["examples"]
    warning = next(w for w in copied.nominal_warnings() if "repeat" in w)
    assert warning.startswith("8 of 20 training images checked repeat") and "--validation" in warning
    loaded = PatchCore.load(copied.save(tmp_path / "model"))
    assert loaded.repeated_images_["repeating"] == 8 and any("repeat" in w for w in loaded.nominal_warnings())
    # Independent nominal images make the warning moot.
    validated = PatchCore(image_size=128, coreset_ratio=0.1).fit(independent + independent[:4], validation=independent[:2])
    assert not any("repeat" in warning for warning in validated.nominal_warnings())
