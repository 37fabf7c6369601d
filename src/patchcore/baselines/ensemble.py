"""Ensembles (seed Table 4): several detectors, scores normalised by held-out good images, averaged."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sklearn.base import BaseEstimator

from patchcore.core.detector import Detector, Prediction
from patchcore.errors import NotFittedError
from patchcore.io.images import ImageInput, collect_images
from patchcore.core.thresholds import DEFAULT_FALSE_ALARM_RATE, Threshold, threshold_at_false_alarm_rate


class Ensemble(BaseEstimator):
    """Average of member detectors (e.g. several backbones, each with its own memory bank).

    Scores of different backbones live on different scales. Each member's image score is turned
    into a z-score with the mean and spread of its scores on held-out good training images, and its
    map (distances, never negative) is divided by the largest value its held-out good maps reached;
    then both are averaged. The test set is never used for normalisation. Members need nominal scores:
    PatchCore's cross-fit gives them; the baselines need `holdout_fraction` > 0 and at least 10 training images.
    """

    def __init__(self, members: Sequence[Detector], false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE) -> None:
        self.members = members
        self.false_alarm_rate = false_alarm_rate

    def fit(self, images: ImageInput | Sequence[ImageInput]) -> "Ensemble":
        if len(self.members) < 1:
            raise ValueError("an ensemble needs at least one member")
        items = collect_images(images, training=True)
        for member in self.members:
            member.fit(items)
        return self._calibrate()

    @classmethod
    def from_fitted(cls, members: Sequence[Detector]) -> "Ensemble":
        """An ensemble of members that are already fitted (each on the same good images)."""
        return cls(members)._calibrate()

    def _calibrate(self) -> "Ensemble":
        for member in self.members:
            member._check_fitted()
            if len(member.nominal_scores_) < 2 or member.nominal_map_range_ is None:
                raise ValueError(
                    f"{type(member).__name__} member has no held-out good images to normalise with: "
                    "use holdout_fraction > 0 and at least 10 training images (PatchCore cross-fits instead)"
                )
        self.score_scales_ = [
            (float(m.nominal_scores_.mean()), float(max(m.nominal_scores_.std(ddof=1), 1e-12))) for m in self.members
        ]
        self.map_scales_ = [max(high, 1e-12) for _, high in (m.nominal_map_range_ for m in self.members)]
        # Each scaled map puts its member's nominal maximum at 1; the nominal medians give the floor.
        low = float(np.mean([low / scale for (low, _), scale in zip((m.nominal_map_range_ for m in self.members),
                                                                    self.map_scales_)]))
        self.nominal_map_range_ = (low, 1.0)
        # Members fitted on the same images with the same seed hold out the same images, so their
        # held-out scores line up image by image and combine as the test scores do.
        lengths = {len(m.nominal_scores_) for m in self.members}
        self.nominal_scores_ = (
            self._combine([m.nominal_scores_ for m in self.members]) if len(lengths) == 1 else np.empty(0)
        )
        return self

    def _combine(self, member_scores: Sequence[np.ndarray]) -> np.ndarray:
        return np.mean([(np.asarray(scores) - mean) / spread
                        for scores, (mean, spread) in zip(member_scores, self.score_scales_)], axis=0)

    def decision_threshold(self) -> Threshold | None:
        """As `Detector.decision_threshold`, on the ensemble's combined held-out scores."""
        return threshold_at_false_alarm_rate(self.nominal_scores_, self.false_alarm_rate)

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> list[Prediction]:
        return list(self.iter_predict(images))

    def iter_predict(self, images: ImageInput | Sequence[ImageInput]) -> Iterator[Prediction]:
        if not hasattr(self, "score_scales_"):
            raise NotFittedError("this Ensemble is not fitted: call fit(...) first")
        items = collect_images(images)
        threshold = self.decision_threshold()
        streams = [member.iter_predict(items) for member in self.members]
        for predictions in zip(*streams):
            score = float(self._combine([[p.score] for p in predictions])[0])
            amap = np.mean([p.anomaly_map / scale for p, scale in zip(predictions, self.map_scales_)], axis=0)
            yield Prediction.decided(score, amap.astype(np.float32), predictions[0].source, threshold)

    def score_samples(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Image scores only: the members score without building maps."""
        if not hasattr(self, "score_scales_"):
            raise NotFittedError("this Ensemble is not fitted: call fit(...) first")
        items = collect_images(images)
        return self._combine([member.score_samples(items) for member in self.members])
