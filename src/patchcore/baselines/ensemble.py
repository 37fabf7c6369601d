"""Ensembles (seed Table 4): several detectors, scores normalised by held-out good images, averaged; saved as one model."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from patchcore import __version__
from patchcore.core.detector import Detector, Prediction
from patchcore.core.thresholds import (DEFAULT_FALSE_ALARM_RATE, Threshold, nominal_score_warnings,
                                       threshold_at_false_alarm_rate)
from patchcore.errors import ModelFileError, NotFittedError
from patchcore.io.images import ImageInput, collect_images
from patchcore.io.persistence import DEFAULT_KEEP_VERSIONS, MANIFEST_CHECKSUM, read_manifest, save_directory


class Ensemble(BaseEstimator):
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

    @property
    def nominal_source_(self) -> str:
        return f"the members' {self.members[0].nominal_source_}, combined"

    def nominal_warnings(self) -> list[str]:
        """As `Detector.nominal_warnings`, for the combined nominal scores."""
        self._check_fitted()
        return nominal_score_warnings(len(self.nominal_scores_), self.false_alarm_rate)

    def _check_fitted(self) -> None:
        if not hasattr(self, "score_scales_"):
            raise NotFittedError("this Ensemble is not fitted: call fit(...) or load a saved one first")

    def fit(self, images: ImageInput | Sequence[ImageInput]) -> "Ensemble":
        if len(self.members) < 1:
            raise ValueError("an ensemble needs at least one member")
        items = collect_images(images, training=True)
        for member in self.members:
            member.fit(items)
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
        self._check_fitted()
        items = collect_images(images)
        threshold = self.decision_threshold()
        streams = [member.iter_predict(items) for member in self.members]
        for predictions in zip(*streams):
            score = float(self._combine([[p.score] for p in predictions])[0])
            amap = np.mean([p.anomaly_map / scale for p, scale in zip(predictions, self.map_scales_)], axis=0)
            yield Prediction.decided(score, amap.astype(np.float32), predictions[0].source, threshold)

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
        members, arrays = [], {"nominal_scores": self.nominal_scores_}
        for i, member in enumerate(self.members):
            member_manifest, member_arrays = member._saved_form()
            members.append(member_manifest)
            arrays.update({f"member{i}.{name}": array for name, array in member_arrays.items()})
        manifest = {"method": self.method, "package_version": __version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "false_alarm_rate": self.false_alarm_rate, "members": members,
                    "score_scales": [list(scale) for scale in self.score_scales_], "map_scales": self.map_scales_,
                    "nominal_map_range": list(self.nominal_map_range_), "n_train_images": self.n_train_images_}
        saved = save_directory(path, manifest, arrays, change=getattr(self, "change_", {"action": "fit"}),
                               keep_versions=keep_versions)
        self.manifest_ = read_manifest(saved)
        self.manifest_.pop(MANIFEST_CHECKSUM, None)
        self.change_ = {"action": "save"}
        return saved

    @classmethod
    def _from_manifest(cls, path: str | Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray],
                       device: str | None, weights: str | Path | None) -> "Ensemble":
        """Inverse of `save`, given the verified directory's manifest and arrays (`patchcore.load_model`)."""
        from patchcore.methods import get_method

        try:
            members = []
            for i, member_manifest in enumerate(manifest["members"]):
                prefix = f"member{i}."
                member_arrays = {name[len(prefix):]: array for name, array in arrays.items() if name.startswith(prefix)}
                members.append(get_method(member_manifest["method"])._from_manifest(
                    path, member_manifest, member_arrays, device, weights))
            ensemble = cls(members, false_alarm_rate=float(manifest["false_alarm_rate"]))
            ensemble.score_scales_ = [(float(mean), float(spread)) for mean, spread in manifest["score_scales"]]
            ensemble.map_scales_ = [float(scale) for scale in manifest["map_scales"]]
            ensemble.nominal_map_range_ = tuple(manifest["nominal_map_range"])
            ensemble.nominal_scores_ = arrays["nominal_scores"]
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{path}: ensemble manifest lacks a required entry or holds a bad one ({error})") from error
        if len(ensemble.score_scales_) != len(members) or len(ensemble.map_scales_) != len(members):
            raise ModelFileError(f"{path}: the ensemble's scales do not match its {len(members)} members")
        ensemble.manifest_ = manifest
        ensemble.change_ = {"action": "save"}
        return ensemble
