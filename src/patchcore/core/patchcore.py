"""The PatchCore estimator: a coreset memory bank of patch features, nearest-neighbour scoring (Eq. 5-7), the
cross-fit of its nominal scores from the patches fit extracted, and updates without a refit."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from patchcore.backbones import LoadedBackbone
from patchcore.core.bank import UNKNOWN_ORIGIN, MemoryBank, TrainingPatches
from patchcore.core.batches import BatchLoop, Picture
from patchcore.core.calibration import MapSummary, NominalCalibration, summarise
from patchcore.core.crossfit import (fold_runs, image_runs, repeat_report, repeat_warnings,
                                     shift_distance, shift_samples)
from patchcore.core.detector import Detector, ScoredPicture
from patchcore.core.features import FeatureExtractor
from patchcore.core.references import GoodPatchFinder, TrainingImages
from patchcore.core.region import RegionOfInterest
from patchcore.core.sampling import SAMPLERS, KeepAll, coreset_size, extend_coreset, make_sampler
from patchcore.core.scoring import image_scores, segment_argmax
from patchcore.io.images import ImageInput, collect_images, load_mask_image, read_image_size
from patchcore.params import OneOf, Range, documented, int_or_raw, param
from patchcore.search import AUTO_INDEX, INDEX_KINDS, NearestNeighbourIndex, make_index, resolve_index_kind

RAW = "raw"
# Patches searched at once when the cross-fit scores the patches fit extracted.
CROSS_FIT_ROWS = 262_144


def _feature_dim_problem(value: Any) -> str | None:
    if value == RAW or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return None
    return "must be a positive integer, 'raw' or None"


def _index_problem(value: Any) -> str | None:
    if isinstance(value, NearestNeighbourIndex) or value in (AUTO_INDEX, *INDEX_KINDS):
        return None
    return f"must be one of {', '.join((AUTO_INDEX, *INDEX_KINDS))} or an index instance"


@documented
@dataclass(kw_only=True, eq=False, repr=False)
class PatchCore(Detector):
    """PatchCore anomaly detector (Roth et al., CVPR 2022).

    `fit` builds the memory bank of locally aware patch features from good images, subsampled by a
    greedy coreset; `predict` returns per-image scores, anomaly maps and decisions, `score_samples` the
    scores alone. Higher scores mean more anomalous.
    """

    method = "patchcore"

    feature_dim: int | Literal["raw"] | None = param(
        None, "Patch feature dimension, levels pooled to equal shares (the official code's merge); 'raw' "
              "concatenates every tapped channel (anomalib's). Default per backbone: raw for Lite0.",
        check=_feature_dim_problem, parse=int_or_raw)
    patch_size: int = param(3, "Neighbourhood p of Eq. 1 (odd): patch features averaged over p x p. 1 finds "
                               "defects of a few pixels far better, and loses on wide defects and textures.",
                           check=Range(1))
    patch_stride: int = param(1, "Stride s on the patch grid (Eq. 3).", check=Range(1))
    distance: str = param(
        "euclidean", "Distance between patch features: euclidean (the paper's), or cosine (each feature scaled to "
                     "length 1 first, so the search's Euclidean distance sqrt(2 - 2 cos) orders as cosine distance: "
                     "AnomalyDINO's, for ViT tokens).", check=OneOf(("euclidean", "cosine")))
    sampler: str = param("greedy_coreset", "Memory-bank subsampling: greedy_coreset, random, learned_proxies "
                                           "(Eq. 8, with the softmax weight exp(-distance)) or none.",
                         check=OneOf(tuple(SAMPLERS)))
    coreset_ratio: float = param(0.1, "Share of patches kept in the memory bank.", check=Range(0, 1, low_open=True))
    projection_dim: int = param(128, "Dimension of the random projection the greedy coreset searches in (0: none).",
                                 check=Range(0))
    index: str | NearestNeighbourIndex = param(
        AUTO_INDEX, "Nearest-neighbour search: auto (torch on CUDA, ivf on CPU), ivf (faiss: codes in the visited "
                    "cells, best candidates re-ranked exactly), torch (exact, in torch on the model's device), exact "
                    "(faiss), ivfflat, ivfpq, hnsw; in the API also an index instance, e.g. IVFIndex(n_probe=16).",
        check=_index_problem, parse=str)
    reweight: bool = param(True, "Eq. 7 score reweighting.")
    num_neighbours: int = param(9, "b of Eq. 7 (1: no reweighting).", check=Range(1))
    holdout_fraction: float = param(
        0.0, "Share of good images held out to measure nominal scores; 0 (PatchCore's default) measures them "
             "by cross-fit instead, from every training image (threshold_folds).")
    threshold_folds: int = param(
        5, "Cross-fit folds for the nominal scores: each fold of the training images is scored against the bank "
           "without its own patches. Used when nothing is held out and no validation images are given.",
        check=Range(2))
    fold_assignment: str = param(
        "auto", "Which training images share a cross-fit fold: interleaved (image i in fold i mod folds: each fold "
                "meets images like its own, as new images meet the bank), contiguous (runs in file order, so "
                "consecutive frames and overlapping crops stay together), or auto: interleaved unless the repeat "
                "check finds images that repeat another fold's there.",
        check=OneOf(("auto", "interleaved", "contiguous")))
    tile_size: int | None = param(
        1024, "The network sees at most this square's worth of working pixels at once: larger images are cut into "
              "equal overlapping tiles (sides at most this, as small as the context margin allows) whose patches "
              "join one memory bank and one map, so memory is bounded by the tile.",
        check=Range(64))
    exclude_suspicious: bool = param(
        False, "Leave the training images whose cross-fit scores lie far above the others' (named in fit's output "
               "and `suspicious_training_images_`; perhaps defective parts in the good folder) out of the memory "
               "bank too, not only out of the threshold.")
    roi_mask: str | Path | np.ndarray | None = param(
        None, "Region of interest: a mask image, white where to look, stretched to each image's size; patches "
              "outside it neither enter the memory bank nor score, and their map is NaN.", parse=str)

    def _tile_size(self) -> int | None:
        return self.tile_size

    def _make_extractor(self, backbone: LoadedBackbone, layers: tuple[str, ...]) -> FeatureExtractor:
        # "raw": every tapped channel concatenated (anomalib's merge); an int: levels pooled to equal
        # shares of it (the official code's); None: the backbone's default, one or the other.
        feature_dim = self._merge(backbone)
        return FeatureExtractor(backbone, layers, self.patch_size, None if feature_dim == RAW else feature_dim,
                                stride=self.patch_stride, unit_length=self.distance == "cosine")

    def _merge(self, backbone: LoadedBackbone) -> int | Literal["raw"]:
        return self.feature_dim or backbone.spec.default_feature_dim

    def _new_index(self) -> NearestNeighbourIndex:
        """A fresh, unfitted search index as the parameters say."""
        if isinstance(self.index, NearestNeighbourIndex):
            return type(self.index)(**self.index.get_params(deep=False))  # sklearn's clone, without importing it
        return make_index(resolve_index_kind(self.index, self.device_))

    # -- the fitted bank ----------------------------------------------------------------------

    @property
    def memory_bank_(self) -> np.ndarray:
        """The bank's rows (n, feature_dim)."""
        return self.bank_.rows

    @property
    def index_(self) -> NearestNeighbourIndex:
        """The search over the bank."""
        return self.bank_.index

    def reindex(self) -> "PatchCore":
        """Search the fitted bank with the index the parameters now name (e.g. after `set_params(index="exact")`)."""
        self._check_fitted()
        self.bank_ = MemoryBank(self.bank_.rows, self.bank_.origins, self.bank_.positions).indexed(
            self._new_index(), self.device_)
        return self

    # -- fitting ----------------------------------------------------------------------------

    def _fit_items(self, items: list[ImageInput], loop: BatchLoop, cross_fit: bool) -> NominalCalibration | None:
        self.repeat_check_seconds_ = self.cross_fit_seconds_ = None  # when there is no cross-fit
        started = time.perf_counter()
        self.region_ = None if self.roi_mask is None else RegionOfInterest(load_mask_image(self.roi_mask),
                                                                           self.preprocessor_)
        self.feature_dim_ = self.extractor_.feature_dim
        patches, names, kept_images = self._extract(items, loop, keep=set(shift_samples(len(items))))
        if len(patches) == 0:
            raise ValueError("the region-of-interest mask leaves no patch to learn from")
        self.extraction_seconds_ = time.perf_counter() - started

        started = time.perf_counter()
        bank = self._sampler().sample(patches)
        self.sampling_seconds_ = time.perf_counter() - started
        started = time.perf_counter()
        self.bank_ = bank.indexed(self._new_index(), self.device_)
        self.index_seconds_ = time.perf_counter() - started
        self.n_patches_seen_ = len(patches)
        self.training_images_ = TrainingImages(tuple(names), tuple(patches.image_sizes))
        self.coverage_radius_ = self._coverage_radius(patches.features)
        # Only where the nominal scores will come from the cross-fit, which a bank of learned proxies (from no one
        # image) or a single image cannot have.
        folds = min(self.threshold_folds, len(names))
        if not cross_fit or bank.origins is None or folds < 2:
            self.repeated_images_ = None
            return None
        started = time.perf_counter()
        shift = shift_distance(patches, kept_images, self._embed)
        report = repeat_report(patches, names, folds, shift, seed=self.seed,
                               interleaved=self.fold_assignment != "contiguous")
        if self.fold_assignment == "auto" and report["repeating"]:  # near-twins would meet in other folds
            report = repeat_report(patches, names, folds, shift, seed=self.seed, interleaved=False)
        self.repeated_images_ = report
        self.interleaved_folds_ = report["folds"] == "interleaved"
        self.repeat_check_seconds_ = time.perf_counter() - started
        started = time.perf_counter()
        scores, maps = self._cross_fit(patches, self.bank_, first=0, folds=folds, interleaved=self.interleaved_folds_)
        source = f"cross-fit over {folds} {report['folds']} folds of the training images"
        calibration = NominalCalibration.of(scores, maps, source, names)
        if self.exclude_suspicious and calibration.suspicious.any():
            calibration = self._without_suspicious(patches, names, calibration, folds)
        self.cross_fit_seconds_ = time.perf_counter() - started
        return calibration

    def _without_suspicious(self, patches: TrainingPatches, names: list[str], calibration: NominalCalibration,
                            folds: int) -> NominalCalibration:
        """The model without the training images the cross-fit named suspicious: their rows leave the bank, the
        greedy coreset continues over the other images' patches where those rows covered them, and the
        cross-fit runs again."""
        numbers = np.flatnonzero(calibration.suspicious)
        self.excluded_images_ = [names[number] for number in numbers]
        self.training_images_ = self.training_images_.without(numbers)
        patches = patches.without_images(numbers)
        names = list(self.training_images_.names)
        bank = self.bank_.without_image_numbers(numbers)
        distances, _ = bank.indexed(self._new_index(), self.device_).index.search(
            np.ascontiguousarray(patches.features), 1)
        added = extend_coreset(patches.features, distances[:, 0], len(patches), self.coverage_radius_)
        self.bank_ = bank.extended(patches.bank(added)).indexed(self._new_index(), self.device_)
        self.n_patches_seen_ = len(patches)
        scores, maps = self._cross_fit(patches, self.bank_, first=0, folds=min(folds, len(names)),
                                       interleaved=self.interleaved_folds_)
        return NominalCalibration.of(scores, maps, f"{calibration.source}, without {len(numbers)} suspicious "
                                                   "images", names)

    @torch.inference_mode()
    def _patch_rows(self, items: Sequence[ImageInput], loop: BatchLoop
                    ) -> Iterator[tuple[int, Picture, np.ndarray, np.ndarray]]:
        """(position in `items`, picture, patch features (n, D), grid positions (n, 2)) of every tile core of every
        readable image, inside the region of interest; each image decoded once."""
        for positions, pictures in loop.chunks(items, "features"):
            for entries, batch in loop.batches(pictures):
                features = self._network(batch).float().cpu()  # bank rows live in host memory
                for (i, tile), grid in zip(entries, features):
                    top, bottom, left, right = tile.core
                    core = grid[top:bottom, left:right]
                    rows, columns = np.meshgrid(np.arange(core.shape[0]) + tile.place[0],
                                                np.arange(core.shape[1]) + tile.place[1], indexing="ij")
                    places = np.stack([rows.ravel(), columns.ravel()], axis=1).astype(np.int32)
                    inside = self._inside(pictures[i].size, tile.place, core.shape[:2])
                    if inside is None:
                        yield positions[i], pictures[i], core.reshape(-1, core.shape[-1]).numpy(), places
                    else:
                        yield positions[i], pictures[i], core[torch.from_numpy(inside)].numpy(), places[inside.ravel()]

    def _extract(self, items: list[ImageInput], loop: BatchLoop, keep: set[int] = frozenset()
                 ) -> tuple[TrainingPatches, list[str], dict[int, Image.Image]]:
        """Every patch of the readable images, each decoded once: the patches (origins numbered over the readable
        images), the readable images' names, and the decoded images at the positions in `keep`, by their number."""
        # One array filled tile by tile, its size known from the image headers: the patches are never held twice.
        patches = TrainingPatches.allocate(sum(self._n_patches(read_image_size(item)) for item in items),
                                           self.feature_dim_)
        sizes: dict[int, tuple[int, int]] = {}  # of the readable images, by position in `items`
        kept_images: dict[int, Image.Image] = {}
        filled = 0
        for position, picture, rows, places in self._patch_rows(items, loop):
            sizes[position] = picture.size
            if position in keep:
                kept_images[position] = picture.image
            patches.features[filled : filled + len(rows)] = rows
            patches.origins[filled : filled + len(rows)] = position
            patches.positions[filled : filled + len(rows)] = places
            filled += len(rows)
        # Tiles arrive grouped by size, not in file order: images are numbered in file order once all are read.
        readable = sorted(sizes)
        patches = patches.trimmed(filled)
        patches.origins[:] = np.searchsorted(readable, patches.origins)
        patches.image_sizes.extend(sizes[position] for position in readable)
        names = [_name(items[position], number) for number, position in enumerate(readable)]
        return patches, names, {readable.index(position): image for position, image in kept_images.items()}

    def _coverage_radius(self, patches: np.ndarray, sample: int = 20_000) -> float:
        """How far the training patches lie from the bank at most (estimated on a seeded sample): the
        coreset's covering radius, which `partial_fit` keeps for new patches."""
        if len(patches) > sample:
            patches = patches[np.sort(np.random.default_rng(self.seed).choice(len(patches), sample, replace=False))]
        distances, _ = self.index_.search(np.ascontiguousarray(patches), 1)
        return float(distances.max())

    def _embed(self, image: Image.Image) -> np.ndarray:
        """An image's patches, as fit extracts them."""
        loop = replace(self._loop(), progress=False)  # one image: no bar
        return np.concatenate([rows for _, _, rows, _ in self._patch_rows([image], loop)])

    def nominal_warnings(self, false_alarm_rate: float | None = None) -> list[str]:
        return super().nominal_warnings(false_alarm_rate) + repeat_warnings(self.repeated_images_,
                                                                            self._rate(false_alarm_rate))

    @property
    def roi_mask_(self) -> np.ndarray | None:
        """The region-of-interest mask the model holds (None: every patch is inspected)."""
        return None if self.region_ is None else self.region_.mask

    def _n_patches(self, size: tuple[int, int]) -> int:
        if self.region_ is not None:
            return int(self.region_.grid(size).sum())
        rows, columns = self.preprocessor_.grid_size(self.preprocessor_.network_size(size))
        return rows * columns

    def _inside(self, size: tuple[int, int], place: tuple[int, int], shape: tuple[int, int]) -> np.ndarray | None:
        """Which patches of a tile's core lie in the region of interest (None: all)."""
        return None if self.region_ is None else self.region_.tile(size, place, shape)

    # -- the cross-fit ----------------------------------------------------------------------

    def _cross_fit(self, patches: TrainingPatches, bank: MemoryBank, first: int, folds: int, interleaved: bool = False
                   ) -> tuple[list[float], list[MapSummary]]:
        """Nominal scores and map summaries of the images whose patches are `patches` (bank origins `first` + their
        number): each of `folds` folds (contiguous runs, or `interleaved`) is scored, from the patches already
        extracted, against `bank` without that fold's own rows."""
        n_images = len(patches.image_sizes)
        numbers, bounds = fold_runs(n_images, folds, interleaved)
        if interleaved:  # numbered so that each fold is a contiguous run; the results put back in file order
            mine = (bank.origins >= first) & (bank.origins < first + n_images)
            local = np.clip(bank.origins - first, 0, n_images - 1)
            bank = replace(bank, origins=np.where(mine, first + numbers[local], bank.origins), index=None,
                           on_device=None)
            patches = replace(patches, origins=numbers[patches.origins],
                              image_sizes=[patches.image_sizes[i] for i in np.argsort(numbers)])
        scores: list[float] = []
        maps: list[MapSummary] = []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            fold_bank = bank.without_images(first + start, first + stop).indexed(self._new_index(), self.device_)
            for image_from, image_to in image_runs(patches.origins, start, stop, CROSS_FIT_ROWS):
                run_scores, grids = self._score_extracted(patches, image_from, image_to, fold_bank)
                scores += run_scores
                maps += [summarise(amap) for amap in self._maps(grids, patches.image_sizes[image_from:image_to])]
        return [scores[number] for number in numbers], [maps[number] for number in numbers]

    @torch.inference_mode()
    def _score_extracted(self, patches: TrainingPatches, start: int, stop: int, bank: MemoryBank
                         ) -> tuple[list[float], list[torch.Tensor]]:
        """(image scores, patch-score grids) of images start to stop - 1 from their extracted patches, against `bank`."""
        chosen = patches.of_images(start, stop)
        queries = torch.from_numpy(np.ascontiguousarray(patches.features[chosen])).to(self.device_)
        owners = torch.from_numpy(patches.origins[chosen] - start).to(self.device_)
        places = torch.from_numpy(patches.positions[chosen].astype(np.int64)).to(self.device_)
        distances, nearest = bank.index.search_tensor(queries, k=1)
        patch_scores = distances[:, 0]
        preprocessor = self.preprocessor_
        grids = []
        for number, size in enumerate(patches.image_sizes[start:stop]):
            grid = torch.zeros(preprocessor.grid_size(preprocessor.network_size(size)), device=self.device_)
            mine = owners == number
            grid[places[mine, 0], places[mine, 1]] = patch_scores[mine]
            grids.append(grid)
        worst = segment_argmax(patch_scores, owners, stop - start)
        scores = self._image_scores(queries[worst], patch_scores[worst], nearest[worst, 0], bank)
        return scores.tolist(), grids

    def _image_scores(self, worst_features: torch.Tensor, worst_scores: torch.Tensor, worst_nearest: torch.Tensor,
                      bank: MemoryBank) -> torch.Tensor:
        """Image scores (Eq. 6-7) from each image's worst patch: its feature, distance and nearest bank row."""
        return image_scores(worst_features[:, None], worst_scores[:, None], worst_nearest[:, None], bank.on_device,
                            bank.index.search_tensor, self.num_neighbours, self.reweight)

    # -- updates ----------------------------------------------------------------------------

    def partial_fit(self, images: ImageInput | Sequence[ImageInput], skip_bad: bool = False) -> "PatchCore":
        """Add good images to a fitted model without refitting it.

        Their patches continue the greedy coreset with the current bank as the points already chosen: a
        patch is added only while it lies farther from the bank (and from the patches added before it)
        than `coverage_radius_`, the distance within which the fit's coreset holds every training patch,
        and at most `coreset_ratio` of the new patches are added. Old rows are never removed. Nominal
        scores for the threshold come as in `fit`: a `holdout_fraction` share of the new images held out,
        or a cross-fit over the new images (each fold against the bank without its own new rows), from the
        patches already extracted: each new image is decoded once.
        """
        self._check_fitted()
        if self.bank_.origins is None:
            raise ValueError("a bank of learned proxies cannot be extended (they come from no image): refit")
        items = collect_images(images, training=True)
        self.skipped_images_ = []
        skipped = self.skipped_images_ if skip_bad else None
        train_items, holdout_items = self._split_holdout(items)
        train_items, _ = self._readable_sizes(train_items, skipped)
        first = self.n_train_images_
        patches, names, _ = self._extract(train_items, self._loop(skipped))
        distances, _ = self.index_.search(np.ascontiguousarray(patches.features), 1)
        limit = len(patches) if isinstance(self._sampler(), KeepAll) else coreset_size(len(patches), self.coreset_ratio)
        added = extend_coreset(patches.features, distances[:, 0], limit, self.coverage_radius_)
        self.bank_ = self.bank_.extended(patches.bank(added, first=first)).indexed(self._new_index(), self.device_)
        self.training_images_ = self.training_images_.extended(names, patches.image_sizes, first)
        if holdout_items:
            predictions = list(self._predict(holdout_items, with_maps=True, loop=self._loop(skipped)))
            how = "held-out new images"
            scores, maps = [p.score for p in predictions], [summarise(p.anomaly_map) for p in predictions]
        else:
            # Runs as long as the fit's (its images / threshold_folds), so that near-twins among the new
            # images are left out together, as they were at fit time; at least two.
            folds = max(2, round(self.threshold_folds * len(names) / (first + len(names))))
            how = f"cross-fit over {folds} runs of the new images"
            scores, maps = [], []
            if min(folds, len(names)) >= 2:
                scores, maps = self._cross_fit(patches, self.bank_, first, min(folds, len(names)))
        if scores:
            self.calibration_ = self.calibration_.extended(
                scores, maps, f"{self.calibration_.source}; {len(scores)} from an update ({how})",
                [p.source or f"held-out new image {i}" for i, p in enumerate(predictions)] if holdout_items
                else names)
        self.n_train_images_ += len(names)
        self.n_patches_seen_ += len(patches)
        previous = self.change_ if self.change_.get("action") == "update" else {}
        self.change_ = {"action": "update",
                        "images_added": previous.get("images_added", 0) + len(names),
                        "images_held_out": previous.get("images_held_out", 0) + len(holdout_items),
                        "rows_added": previous.get("rows_added", 0) + len(added)}
        self.rows_added_ = len(added)
        return self

    def _sampler(self):
        return make_sampler(self.sampler, self.coreset_ratio, seed=self.seed, projection_dim=self.projection_dim,
                            device=self.device_, progress=self.progress)

    # -- inference --------------------------------------------------------------------------

    def patch_features(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Locally aware patch features of images, (n_patches, feature_dim): what the bank is built from."""
        self._check_fitted()
        return np.concatenate([rows for _, _, rows, _ in self._patch_rows(collect_images(images), self._loop())])

    @torch.inference_mode()  # the features are inference tensors: small ops on them cost less in this mode
    def _score_pictures(self, pictures: list[Picture], loop: BatchLoop) -> list[ScoredPicture]:
        """Patch distances tile by tile into each picture's grid (memory bounded by a batch of tiles), the
        worst patch of each tile kept, then of each picture; then Eq. 7 on that patch."""
        preprocessor = self.preprocessor_
        sizes = [picture.size for picture in pictures]
        # Everything stays on the model's device (features, search, Eq. 7, maps), and nothing waits for it
        # until the scores are read: per-tile choices are tensor ops, never Python values.
        grids = [torch.zeros(preprocessor.grid_size(preprocessor.network_size(size)), device=self.device_)
                 for size in sizes]
        nearest_rows = [torch.full(grid.shape, -1, dtype=torch.int64, device=self.device_) for grid in grids]
        worst_values, worst_features, worst_found, owners = [], [], [], []
        for entries, batch in loop.batches(pictures):
            features = self._network(batch).float()
            kept = []  # (picture index, tile, region-of-interest mask or None, core features) of each inspected tile
            for (i, tile), grid in zip(entries, features):
                core = grid[tile.core[0] : tile.core[1], tile.core[2] : tile.core[3]]
                inside = self._inside(sizes[i], tile.place, core.shape[:2])
                if inside is None or inside.any():  # a tile wholly outside the region is not inspected
                    kept.append((i, tile, inside, core))
            if not kept:
                continue
            queries = torch.cat([core.reshape(-1, core.shape[-1]) for *_, core in kept])
            distances, nearest = self.index_.search_tensor(queries, k=1)
            patch_scores = distances[:, 0]
            candidates, patch_counts, offset = [], [], 0
            for i, tile, inside, core in kept:
                rows, columns = core.shape[:2]
                tile_scores = patch_scores[offset : offset + rows * columns]
                if inside is not None:  # outside the region: 0 on the grid, never the worst
                    inside = torch.from_numpy(inside.reshape(-1)).to(tile_scores.device)
                    tile_scores = torch.where(inside, tile_scores, torch.zeros_like(tile_scores))
                    candidates.append(torch.where(inside, tile_scores, torch.full_like(tile_scores, -np.inf)))
                else:
                    candidates.append(tile_scores)
                top, left = tile.place
                grids[i][top : top + rows, left : left + columns] = tile_scores.reshape(rows, columns)
                nearest_rows[i][top : top + rows, left : left + columns] = nearest[offset : offset + rows * columns,
                                                                                   0].reshape(rows, columns)
                patch_counts.append(rows * columns)
                offset += rows * columns
            candidate_scores = torch.cat(candidates)
            best = _segments_argmax(candidate_scores, patch_counts)
            worst_values.append(candidate_scores[best])
            worst_features.append(queries[best])
            worst_found.append(nearest[best, 0])
            owners += [i for i, *_ in kept]
        if set(owners) != set(range(len(pictures))):
            raise ValueError("the region-of-interest mask leaves no patch of this image to inspect")
        values = torch.cat(worst_values)
        worst = _segments_argmax(values, [1] * len(owners), owners, len(pictures))
        scores = self._image_scores(torch.cat(worst_features)[worst], values[worst], torch.cat(worst_found)[worst],
                                    self.bank_)
        return list(zip(scores.tolist(), grids, nearest_rows))

    def _good_patch_finder(self) -> GoodPatchFinder | None:
        if self.bank_.positions is None or not len(self.training_images_):
            return None
        return GoodPatchFinder(self.bank_, self.training_images_, self.preprocessor_, reach=self.patch_size // 2 + 1)

    def _maps(self, grids: list[torch.Tensor], sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        maps = super()._maps(grids, sizes)
        if self.region_ is not None:
            for amap, size in zip(maps, sizes):
                amap[self.region_.outside_pixels(size)] = np.nan
        return maps

    # -- persistence ------------------------------------------------------------------------

    def _fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        state = {"n_patches_seen": self.n_patches_seen_, "coverage_radius": self.coverage_radius_,
                 "repeated_training_images": self.repeated_images_,
                 "training_images": self.training_images_.as_json()}
        arrays = {"memory_bank": self.memory_bank_}
        if self.bank_.positions is not None:  # where each row came from: names the good patch nearest a region
            arrays["bank_origins"] = self.bank_.origins.astype(np.int32)
            arrays["bank_positions"] = self.bank_.positions.astype(np.int32)
        if self.roi_mask_ is not None:
            arrays["roi_mask"] = self.roi_mask_
        if self.index_.saves_state:  # trained indexes are saved, so loading never re-trains them
            arrays["search_index"] = self.index_.state()
        return state, arrays

    def _resolved_params(self) -> dict[str, Any]:
        return {"feature_dim": RAW if self._merge(self.backbone_) == RAW else self.feature_dim_}

    def _restore_state(self, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        bank = arrays["memory_bank"]
        self.feature_dim_ = self.extractor_.feature_dim
        if bank.ndim != 2 or bank.shape[1] != self.feature_dim_:
            raise ValueError(f"memory bank shape {bank.shape} does not match feature_dim {self.feature_dim_}")
        # Models saved before 2026-12-07 did not keep where each row came from: every row is an old one to a
        # later partial_fit, and names no good patch beside a region.
        origins, positions = arrays.get("bank_origins"), arrays.get("bank_positions")
        if self.sampler == "learned_proxies":
            origins = positions = None
        elif origins is None or positions is None or not len(origins) == len(positions) == len(bank):
            origins = np.full(len(bank), UNKNOWN_ORIGIN, dtype=np.int64)
            positions = np.full((len(bank), 2), UNKNOWN_ORIGIN, dtype=np.int32)
        else:
            origins = origins.astype(np.int64)
        self.bank_ = MemoryBank(bank, origins, positions).indexed(self._new_index(), self.device_,
                                                                  arrays.get("search_index"))
        self.training_images_ = TrainingImages.from_json(manifest.get("training_images"))
        mask = arrays.get("roi_mask")
        self.region_ = None if mask is None else RegionOfInterest(mask, self.preprocessor_)
        if mask is not None:
            self.roi_mask = mask  # the mask itself travels with the model, not its original path
        self.n_patches_seen_ = manifest["n_patches_seen"]
        # Older models did not record it: 0 means partial_fit adds up to coreset_ratio of the new patches.
        self.coverage_radius_ = float(manifest.get("coverage_radius", 0.0))
        self.repeated_images_ = manifest.get("repeated_training_images")  # not checked before 2026-11-30


def _name(item: ImageInput, number: int) -> str:
    """A training image's name: its absolute path (so that it is found again from another directory)."""
    return str(Path(item).resolve()) if isinstance(item, (str, Path)) else f"image {number}"


def _segments_argmax(values: torch.Tensor, counts: list[int], labels: list[int] | None = None,
                     n_segments: int | None = None) -> torch.Tensor:
    """`segment_argmax` of `values` cut into consecutive runs of `counts[i]` values labelled `labels[i]` (default
    i). When each label is one run and the runs are equally long (one tile per picture, the usual case) it
    is a reshape and an argmax; else the labels go to the device, and a copy from the host waits for its queue."""
    n_runs = len(counts)
    if (labels is None or labels == list(range(n_runs))) and len(set(counts)) == 1:
        return values.view(n_runs, counts[0]).argmax(dim=1) + torch.arange(n_runs, device=values.device) * counts[0]
    ids = np.repeat(np.asarray(range(n_runs) if labels is None else labels, dtype=np.int64), counts)
    return segment_argmax(values, torch.from_numpy(ids).to(values.device), n_segments or n_runs)
