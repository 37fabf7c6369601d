"""Image AUROC, pixel AUROC and PRO (per-region overlap), in per cent; pixel metrics in bounded memory; what a
threshold decides against what the best threshold could (oracle recall), and segmentation F1 at a pixel threshold."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import label
from sklearn.metrics import roc_auc_score

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of image scores against good (0) / defective (1) labels, in per cent."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        raise ValueError("image AUROC needs both good and defective test images")
    return 100.0 * float(roc_auc_score(labels, scores))


def oracle_recall(good_scores: np.ndarray, defect_scores: np.ndarray, false_alarm_rate: float) -> float:
    """The highest share of defective images any threshold flags while flagging at most `false_alarm_rate` of the
    good images: what a threshold set with hindsight of the test labels reaches."""
    good = np.sort(np.asarray(good_scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(false_alarm_rate * len(good) + 1e-9))  # good images it may flag
    lowest = good[allowed] if allowed < len(good) else -np.inf  # flags the scores strictly above it
    return float((np.asarray(defect_scores) > lowest).mean())


class SegmentationCounts:
    """Pixels of a test set segmented by one pixel threshold, against the masks: F1 over all pixels at once (the
    MVTec AD 2 protocol), and the defective images with a region on their defect."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.true_positives = self.false_positives = self.false_negatives = 0

    def update(self, anomaly_map: np.ndarray, mask: np.ndarray) -> None:
        flagged = np.nan_to_num(anomaly_map, nan=-np.inf) > self.threshold
        self.true_positives += int((flagged & mask).sum())
        self.false_positives += int((flagged & ~mask).sum())
        self.false_negatives += int((~flagged & mask).sum())

    def f1(self) -> float:
        """Pixel F1 in per cent (0 when nothing is flagged and nothing is defective)."""
        denominator = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 100.0 * 2 * self.true_positives / denominator if denominator else 0.0


class PixelMetrics:
    """Streams (anomaly map, mask) pairs into histograms; then pixel AUROC and PRO.

    Memory is O(bins x regions), whatever the number of pixels. Scores must be >= 0 (distances are).
    Histogram range [0, upper), a power of two, doubles, merging bin pairs exactly, whenever a larger score arrives;
    pixels sharing a bin count as tied, which is how ROC curves treat equal scores.
    """

    def __init__(self, bins: int = 8192) -> None:
        if bins < 2 or bins % 2:
            raise ValueError("bins must be an even number >= 2")
        self.bins = bins
        self.upper: float | None = None
        self.normal = np.zeros(bins, dtype=np.int64)
        self.anomalous = np.zeros(bins, dtype=np.int64)
        self.regions: list[np.ndarray] = []  # one histogram per connected ground-truth region

    def update(self, anomaly_map: np.ndarray, mask: np.ndarray) -> None:
        anomaly_map = np.asarray(anomaly_map, dtype=np.float64)
        mask = np.asarray(mask, dtype=bool)
        if anomaly_map.shape != mask.shape:
            raise ValueError(f"map shape {anomaly_map.shape} differs from mask shape {mask.shape}")
        if anomaly_map.size == 0:
            return
        # NaN marks pixels the model did not inspect (outside a centre crop or region of interest): it
        # flags none of them, as if they scored 0.
        anomaly_map = np.nan_to_num(anomaly_map, nan=0.0, posinf=np.inf, neginf=-np.inf)
        if not np.isfinite(anomaly_map).all() or anomaly_map.min() < 0:
            raise ValueError("anomaly maps must be finite and non-negative")
        self._grow_to(float(anomaly_map.max()))
        bin_index = self._bin(anomaly_map)
        self.normal += np.bincount(bin_index[~mask], minlength=self.bins)
        self.anomalous += np.bincount(bin_index[mask], minlength=self.bins)
        regions, count = label(mask, structure=EIGHT_CONNECTED)
        if count:
            per_region = np.bincount(regions[mask] * self.bins + bin_index[mask], minlength=(count + 1) * self.bins)
            self.regions.extend(per_region.reshape(count + 1, self.bins)[1:])

    def _bin(self, values: np.ndarray) -> np.ndarray:
        return np.minimum((values * (self.bins / self.upper)).astype(np.int64), self.bins - 1)

    def _grow_to(self, peak: float) -> None:
        if self.upper is None:
            # A power of two, doubled as needed: the final range, and so every metric, is the same whatever the
            # order the maps come in (the same test set read in two layouts gives the same numbers).
            self.upper = 2.0 ** np.ceil(np.log2(max(peak, 1e-12)))
            if peak >= self.upper:
                self.upper *= 2.0
            return
        while peak >= self.upper:
            self.upper *= 2.0
            self.normal, self.anomalous = _halve(self.normal), _halve(self.anomalous)
            self.regions = [_halve(h) for h in self.regions]

    def _rates(self) -> tuple[np.ndarray, np.ndarray]:
        """False- and true-positive rates for thresholds from above the top bin down to 0."""
        if self.normal.sum() == 0 or self.anomalous.sum() == 0:
            raise ValueError("pixel metrics need both anomalous and defect-free pixels")
        false_positive = np.concatenate([[0], np.cumsum(self.normal[::-1])]) / self.normal.sum()
        true_positive = np.concatenate([[0], np.cumsum(self.anomalous[::-1])]) / self.anomalous.sum()
        return false_positive, true_positive

    def pixel_auroc(self) -> float:
        false_positive, true_positive = self._rates()
        return 100.0 * float(np.trapezoid(true_positive, false_positive))

    def pro_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(pixel false-positive rate, mean overlap of ground-truth regions), thresholds descending."""
        false_positive, _ = self._rates()
        overlaps = np.stack([np.concatenate([[0], np.cumsum(h[::-1])]) / h.sum() for h in self.regions])
        return false_positive, overlaps.mean(axis=0)

    def pro(self, max_fpr: float = 0.3) -> float:
        """Area under mean region overlap vs. pixel FPR, for FPR in [0, max_fpr], divided by max_fpr."""
        false_positive, mean_overlap = self.pro_curve()
        return 100.0 * _area_up_to(false_positive, mean_overlap, max_fpr) / max_fpr


def au_pro(anomaly_maps, masks, max_fpr: float = 0.3) -> float:
    """AU-PRO in per cent of anomaly maps against their boolean masks, integrated up to a pixel false-positive rate
    of `max_fpr` (0.3: MVTec AD's protocol; 0.05: MVTec AD 2's headline metric) and divided by it."""
    metrics = PixelMetrics()
    for anomaly_map, mask in zip(anomaly_maps, masks, strict=True):
        metrics.update(anomaly_map, mask)
    return metrics.pro(max_fpr)


def _halve(histogram: np.ndarray) -> np.ndarray:
    merged = histogram.reshape(-1, 2).sum(axis=1)
    return np.concatenate([merged, np.zeros_like(merged)])


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under the curve (x ascending) from x = 0 to x = limit, interpolating at the limit."""
    inside = x <= limit
    xs, ys = x[inside], y[inside]
    if xs[-1] < limit:
        after = np.argmax(x > limit)
        y_at_limit = np.interp(limit, [x[after - 1], x[after]], [y[after - 1], y[after]])
        xs, ys = np.append(xs, limit), np.append(ys, y_at_limit)
    return float(np.trapezoid(ys, xs))
