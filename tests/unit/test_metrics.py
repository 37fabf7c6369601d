import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from patchcore.evaluation.metrics import PixelMetrics, SegmentationCounts, au_pro, image_auroc, oracle_recall


@pytest.fixture()
def two_regions() -> np.ndarray:
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:6, 2:6] = True  # region A, 16 px
    mask[12:16, 12:16] = True  # region B, 16 px, not touching A
    return mask


def pixel_metrics(*pairs) -> PixelMetrics:
    metrics = PixelMetrics()
    for amap, mask in pairs:
        metrics.update(amap, mask)
    return metrics


def test_perfect_map_scores_100(two_regions) -> None:
    metrics = pixel_metrics((two_regions * 1.0, two_regions))
    assert metrics.pixel_auroc() == pytest.approx(100.0)
    assert metrics.pro() == pytest.approx(100.0)


def test_one_region_found_one_missed_by_hand(two_regions) -> None:
    amap = np.zeros((20, 20))
    amap[2:6, 2:6] = 1.0  # A ranked above everything, B tied with the good pixels
    metrics = pixel_metrics((amap, two_regions))
    # ROC: (0,0) -> (0, 0.5) -> (1, 1): area 0.5 + 0.25.
    assert metrics.pixel_auroc() == pytest.approx(75.0)
    # PRO curve (0,0) -> (0, 0.5) -> (1, 1): mean overlap 0.5 + 0.5 * fpr; area over [0, 0.3]
    # = 0.15 + 0.0225, divided by 0.3 = 0.575.
    assert metrics.pro() == pytest.approx(57.5)


def test_constant_map_is_chance(two_regions) -> None:
    metrics = pixel_metrics((np.full((20, 20), 3.0), two_regions))
    assert metrics.pixel_auroc() == pytest.approx(50.0)
    # The diagonal from (0, 0) to (1, 1): area 0.045 over [0, 0.3], / 0.3 = 0.15.
    assert metrics.pro() == pytest.approx(15.0)


def test_pro_weights_regions_equally_not_pixels() -> None:
    mask = np.zeros((30, 30), dtype=bool)
    mask[0:10, 0:10] = True  # a big region, 100 px, found
    mask[20, 20] = True  # a one-pixel region, missed
    amap = np.zeros((30, 30))
    amap[0:10, 0:10] = 1.0
    metrics = pixel_metrics((amap, mask))
    assert metrics.pro() == pytest.approx(57.5)  # same as two equal regions: per-region mean
    assert metrics.pixel_auroc() > 99.0  # pixel AUROC is dominated by the big region


def test_eight_connected_regions_are_one() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[2, 2] = mask[3, 3] = True  # diagonal neighbours: one region under 8-connectivity
    metrics = pixel_metrics((mask * 1.0, mask))
    assert len(metrics.regions) == 1


def test_pro_never_exceeds_100_and_matches_sklearn_auroc_on_random_maps() -> None:
    rng = np.random.default_rng(0)
    metrics = PixelMetrics()
    all_scores, all_labels = [], []
    for _ in range(6):
        mask = np.zeros((40, 40), dtype=bool)
        y, x = rng.integers(0, 30, 2)
        mask[y : y + 8, x : x + 8] = True
        amap = rng.gamma(2.0, 1.0, (40, 40)) + 2.0 * mask * rng.random((40, 40))
        amap *= rng.uniform(0.5, 4.0)  # later maps exceed the first map's range: the bins must grow
        metrics.update(amap, mask)
        all_scores.append(amap.ravel())
        all_labels.append(mask.ravel())
    exact = 100 * roc_auc_score(np.concatenate(all_labels), np.concatenate(all_scores))
    assert metrics.pixel_auroc() == pytest.approx(exact, abs=0.05)
    assert 0.0 <= metrics.pro() <= 100.0


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="shape"):
        PixelMetrics().update(np.zeros((4, 4)), np.zeros((4, 5), dtype=bool))
    with pytest.raises(ValueError, match="non-negative"):
        PixelMetrics().update(-np.ones((4, 4)), np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="both"):
        pixel_metrics((np.ones((4, 4)), np.zeros((4, 4), dtype=bool))).pixel_auroc()
    with pytest.raises(ValueError, match="both good and defective"):
        image_auroc(np.array([1, 1]), np.array([0.2, 0.3]))


def test_image_auroc_in_percent() -> None:
    assert image_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(75.0)


def test_oracle_recall_is_the_best_recall_at_no_more_false_alarms() -> None:
    good = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    defects = np.array([3.5, 5.0, 9.0, 11.0])
    assert oracle_recall(good, defects, 0.0) == 0.25  # above every good score: only 11
    assert oracle_recall(good, defects, 0.2) == 0.75  # one good image may be flagged: above 4
    assert oracle_recall(good, defects, 0.39) == 0.75
    assert oracle_recall(good, defects, 0.4) == 1.0  # two: above 3


def test_segmentation_f1_counts_pixels_over_the_whole_set() -> None:
    counts = SegmentationCounts(threshold=0.5)
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True
    amap = np.zeros((4, 4))
    amap[:2, :3] = 1.0  # 4 right, 2 wrong
    amap[3, 3] = np.nan  # not inspected: never flagged
    counts.update(amap, mask)
    counts.update(np.zeros((4, 4)), mask)  # 4 missed
    assert counts.f1() == pytest.approx(100 * 2 * 4 / (2 * 4 + 2 + 4))


def reference_au_pro(maps: list[np.ndarray], masks: list[np.ndarray], max_fpr: float) -> float:
    """AU-PRO as MVTec's evaluation code defines it, computed directly: every distinct score a threshold, the
    mean overlap of the connected ground-truth regions against the FPR of defect-free pixels, the area up to
    `max_fpr` (interpolated there) over `max_fpr`."""
    from scipy.ndimage import label

    scores = np.concatenate([m.ravel() for m in maps])
    normal = np.concatenate([~k.ravel() for k in masks])
    region_ids, offset = [], 0
    for mask in masks:
        regions, count = label(mask, structure=np.ones((3, 3)))
        region_ids.append(np.where(regions > 0, regions + offset, 0).ravel())
        offset += count
    region_ids = np.concatenate(region_ids)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0), len(scores) - 1]  # ties flag together
    flagged_normal = np.cumsum(normal[order])[last_of_each_score]
    per_region = np.stack([np.cumsum(region_ids[order] == r)[last_of_each_score] / (region_ids == r).sum()
                           for r in range(1, offset + 1)])
    fprs = np.r_[0.0, flagged_normal / normal.sum()]
    pros = np.r_[0.0, per_region.mean(axis=0)]
    inside = fprs <= max_fpr
    xs, ys = fprs[inside], pros[inside]
    after = np.argmax(fprs > max_fpr)
    ys_limit = np.interp(max_fpr, [fprs[after - 1], fprs[after]], [pros[after - 1], pros[after]])
    return 100 * np.trapezoid(np.append(ys, ys_limit), np.append(xs, max_fpr)) / max_fpr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_au_pro_at_005_and_03_equals_a_direct_computation_on_random_maps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for _ in range(5):
        mask = np.zeros((32, 48), dtype=bool)
        for _ in range(rng.integers(0, 3)):  # 0 to 2 regions of random size per image
            y, x = rng.integers(0, 26), rng.integers(0, 40)
            mask[y : y + rng.integers(1, 7), x : x + rng.integers(1, 9)] = True
        maps.append(rng.gamma(2.0, 1.0, mask.shape) + 3.0 * mask * rng.random(mask.shape))
        masks.append(mask)
    for max_fpr in (0.05, 0.3):
        assert au_pro(maps, masks, max_fpr) == pytest.approx(reference_au_pro(maps, masks, max_fpr), abs=0.05)
    # The two limits measure different things: on these maps the strict one is lower.
    assert au_pro(maps, masks, 0.05) < au_pro(maps, masks) - 5
