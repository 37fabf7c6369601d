"""Decision thresholds: from held-out good images at a false-alarm rate, and F1-optimal on labelled data;
and the check that the cross-fit's nominal images do not repeat each other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import precision_recall_curve

from patchcore.search import exact_nearest

DEFAULT_FALSE_ALARM_RATE = 0.01
# A training image repeats others when, at the median, its patches lie closer to another cross-fit fold's
# patches than half the distance a 1-pixel shift of the image moves them. Measured (docs/results.md):
# independent ELPV cells 1.7-2.3, cells with their copy in another fold 0.0, overlapping crops of one
# texture photo 0.08-0.4.
NEAR_DUPLICATE_RATIO = 0.5


@dataclass(frozen=True)
class Threshold:
    """A score threshold with the spread of good scores that scales the normalised score."""

    value: float
    false_alarm_rate: float
    nominal_spread: float

    def is_anomalous(self, score: float) -> bool:
        return bool(score > self.value)

    def normalise(self, score: float) -> float:
        """A logistic of (score - threshold) / spread of good scores: 0.5 at the threshold, in (0, 1)."""
        z = (score - self.value) / self.nominal_spread
        return float(0.5 * (1.0 + np.tanh(0.5 * z)))  # the logistic, without overflow for large |z|


def validate_false_alarm_rate(rate: float) -> None:
    if not 0.0 < rate < 1.0:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {rate}")


def threshold_at_false_alarm_rate(nominal_scores: np.ndarray, rate: float) -> Threshold | None:
    """The smallest held-out good score that at most `rate` of the held-out good scores exceed.

    None without held-out scores. With n held-out images the rate is met in steps of 1/n: at 1 % and
    fewer than 100 images the threshold is the highest good score seen.
    """
    validate_false_alarm_rate(rate)
    scores = np.asarray(nominal_scores, dtype=np.float64)
    if scores.size == 0:
        return None
    value = float(np.quantile(scores, 1.0 - rate, method="higher"))
    spread = float(scores.std(ddof=1)) if scores.size > 1 else 0.0
    if not spread > 0:
        spread = max(abs(value), 1.0) * 1e-3  # one good image (or identical ones): a steep but finite slope
    return Threshold(value, rate, spread)


def nominal_score_warnings(count: int, rate: float) -> list[str]:
    """What limits a threshold made from `count` nominal scores at false-alarm `rate`: none at all, or too few."""
    if count == 0:
        return ["no nominal scores (too few good images to hold any out): predictions carry no good/defect "
                "decision; give more images, --validation DIR, or --holdout-fraction"]
    if count * rate < 1:
        return [f"{count} nominal scores cannot resolve a {rate:.1%} false-alarm rate: the threshold is the highest "
                f"good score seen, so the rate it promises is at best 1 in {count + 1}"]
    return []


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 for `score >= threshold` on labelled images (evaluation only)."""
    labels = np.asarray(labels, dtype=int)
    if labels.min() == labels.max():
        raise ValueError("the F1-optimal threshold needs both good and defective images")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The last (precision, recall) pair has no threshold: it is the "predict nothing" end.
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def fold_bounds(n_images: int, folds: int) -> np.ndarray:
    """The cross-fit's `folds` contiguous runs of `n_images` images in file order: run f is images
    bounds[f] to bounds[f + 1] - 1."""
    return np.linspace(0, n_images, folds + 1).round().astype(int)


def fold_of_images(n_images: int, folds: int) -> np.ndarray:
    """The cross-fit fold (`fold_bounds`) of each of `n_images` images."""
    return np.searchsorted(fold_bounds(n_images, folds)[1:], np.arange(n_images), side="right")


@dataclass(frozen=True)
class Repeat:
    """A training image whose patches another fold's image already shows (`ratio`: its median patch
    distance to the other folds over the distance of a 1-pixel shift)."""

    image: int
    nearest_image: int
    ratio: float


def repeat_ratios(patches: np.ndarray, origins: np.ndarray, folds: np.ndarray, shift_distance: float,
                  seed: int = 0, max_images: int = 64, patches_per_image: int = 32,
                  chunk_rows: int = 8192) -> list[Repeat]:
    """Each checked image (up to `max_images`, spread over the set) among `patches` (n, D) of images
    `origins` (n,) in cross-fit `folds` (one per image), with its ratio: its sampled patches are searched
    exactly among the patches of every other fold. It repeats another when the ratio is below
    NEAR_DUPLICATE_RATIO."""
    rng = np.random.default_rng(seed)
    images = np.unique(origins)
    if len(images) > max_images:
        images = images[np.linspace(0, len(images) - 1, max_images).round().astype(int)]
    queries, owners = [], []
    for image in images:
        rows = np.flatnonzero(origins == image)
        queries.append(patches[rng.choice(rows, min(patches_per_image, len(rows)), replace=False)])
        owners.append(np.full(len(queries[-1]), image))
    query = torch.from_numpy(np.concatenate(queries))
    owner = np.concatenate(owners)
    query_folds = folds[owner]
    best = torch.full((len(query),), torch.inf)
    best_row = torch.zeros(len(query), dtype=torch.long)
    for start in range(0, len(patches), chunk_rows):
        block = torch.from_numpy(patches[start : start + chunk_rows])
        block_folds = folds[origins[start : start + chunk_rows]]
        for fold in np.unique(query_folds):  # each fold's queries against the block's rows of other folds
            asking = torch.from_numpy(np.flatnonzero(query_folds == fold))
            allowed = torch.from_numpy(np.flatnonzero(block_folds != fold))
            if len(allowed) == 0:
                continue
            others = block[allowed]
            distances, rows = exact_nearest(query[asking], others, (others * others).sum(dim=1), 1, 1)
            closer = distances[:, 0] < best[asking]
            best[asking] = torch.where(closer, distances[:, 0], best[asking])
            best_row[asking] = torch.where(closer, allowed[rows[:, 0]] + start, best_row[asking])
    distances, nearest_images = best.numpy(), origins[best_row.numpy()]
    checked = []
    for image in images:
        mine = owner == image
        repeated = np.unique(nearest_images[mine], return_counts=True)
        checked.append(Repeat(int(image), int(repeated[0][repeated[1].argmax()]),
                              float(np.median(distances[mine])) / max(shift_distance, 1e-12)))
    return checked
