"""Ensembles (seed Table 4): several detectors, scores normalised by held-out good images, averaged; saved as one model."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from patchcore.core.calibration import Calibrated, NominalCalibration
from patchcore.core.detector import DecisionRule, Detector, Prediction
from patchcore.core.manifest import save_model
from patchcore.core.thresholds import DEFAULT_FALSE_ALARM_RATE
from patchcore.io.images import ImageInput, collect_images
from patchcore.io.persistence import DEFAULT_KEEP_VERSIONS
from patchcore.params import Params


class Ensemble(Params, Calibrated):
    """Average of member detectors (e.g. several backbones, each with its own memory bank).

    Scores of different backbones live on different scales. Each member's image score is turned
    into a z-score with the mean and spread of its scores on held-out good training images, and its
    map (distances, never negative) is divided by the largest value its held-out good maps reached;
    then both are averaged. The test set is never used for normalisation. Members need nominal scores:
    PatchCore's cross-fit gives them; the baselines need `holdout_fraction` > 0 and at least 10 training images.
    """

    method = "ensemble"

    def __init__(self, members: Sequence[Detector], false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE) -> None:
        self.members = members
        self.false_alarm_rate = false_alarm_rate

    # What the command line and the service read of any model, from the members.
    @property
    def bit_depth(self) -> int | None:
        return self.members[0].bit_depth

    @property
    def backbone(self) -> str:
        return " + ".join(dict.fromkeys(member.backbone for member in self.members))

    @property
    def n_train_images_(self) -> int:
        return self.members[0].n_train_images_

    @staticmethod
    def combined_source(members: Sequence[Detector]) -> str:
        return f"the members' {members[0].nominal_source_}, combined"

    def fit(self, images: ImageInput | Sequence[ImageInput], skip_bad: bool = False) -> "Ensemble":
        if len(self.members) < 1:
            raise ValueError("an ensemble needs at least one member")
        items = collect_images(images, training=True)
        for member in self.members:
            member.fit(items, skip_bad=skip_bad)
        self.skipped_images_ = self.members[0].skipped_images_
        self.change_ = {"action": "fit", "images": len(items)}
        return self._calibrate()

    @classmethod
    def from_fitted(cls, members: Sequence[Detector]) -> "Ensemble":
        """An ensemble of members that are already fitted (each on the same good images)."""
        return cls(members)._calibrate()

    def _calibrate(self) -> "Ensemble":
        if len({member.bit_depth for member in self.members}) > 1:
            raise ValueError("ensemble members must read images alike: give them the same bit_depth")
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
        # Members fitted on the same images with the same seed hold out the same images, so their
        # held-out scores line up image by image and combine as the test scores do.
        lengths = {len(m.nominal_scores_) for m in self.members}
        scores = self._combine([m.nominal_scores_ for m in self.members]) if len(lengths) == 1 else np.empty(0)
        # The combined map's peak is at most the mean of the members' scaled peaks (the max of a mean is at
        # most the mean of the maxima): a region threshold from these bounds flags good images at most as
        # often as the rate says, never more.
        peaks = [m.calibration_.peaks / scale for m, scale in zip(self.members, self.map_scales_)]
        peak_bounds = np.mean(peaks, axis=0) if {len(p) for p in peaks} == {len(scores)} else np.empty(0)
        self.calibration_ = NominalCalibration(scores, (low, 1.0), self.combined_source(self.members), peak_bounds)
        return self

    def decision_rule(self, false_alarm_rate: float | None = None) -> DecisionRule:
        """The image threshold and the pixel threshold of defect regions at `false_alarm_rate` (default: the
        ensemble's own), both from the combined nominal scores and map peaks."""
        return DecisionRule.at(self.calibration_, self._rate(false_alarm_rate))

    def _combine(self, member_scores: Sequence[np.ndarray]) -> np.ndarray:
        return np.mean([(np.asarray(scores) - mean) / spread
                        for scores, (mean, spread) in zip(member_scores, self.score_scales_)], axis=0)

    def predict(self, images: ImageInput | Sequence[ImageInput], false_alarm_rate: float | None = None
                ) -> list[Prediction]:
        return list(self.iter_predict(images, false_alarm_rate))

    def iter_predict(self, images: ImageInput | Sequence[ImageInput], false_alarm_rate: float | None = None
                     ) -> Iterator[Prediction]:
        self._check_fitted()
        rule = self.decision_rule(false_alarm_rate)
        items = collect_images(images)
        streams = [member.iter_predict(items) for member in self.members]
        for predictions in zip(*streams):
            score = float(self._combine([[p.score] for p in predictions])[0])
            amap = np.mean([p.anomaly_map / scale for p, scale in zip(predictions, self.map_scales_)], axis=0)
            yield rule(score, amap.astype(np.float32), predictions[0].source, with_regions=True)

    def score_samples(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Image scores only: the members score without building maps."""
        self._check_fitted()
        items = collect_images(images)
        return self._combine([member.score_samples(items) for member in self.members])

    def save(self, path: str | Path, keep_versions: int = DEFAULT_KEEP_VERSIONS) -> Path:
        """Write the fitted ensemble as one model directory, as `Detector.save` writes one model: each member's
        manifest inside the ensemble's, its arrays beside the ensemble's as `memberN.NAME.npy`, so the
        directory is written, versioned and checksummed whole. `patchcore.load_model` reads it back."""
        self._check_fitted()
        return save_model(self, path, keep_versions)
