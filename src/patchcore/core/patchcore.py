"""The PatchCore estimator: a coreset memory bank of patch features, nearest-neighbour scoring (Eq. 5-7)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageChops
from sklearn.base import clone

from patchcore.backbones import LoadedBackbone
from patchcore.core.detector import Detector, Picture
from patchcore.core.features import FeatureExtractor
from patchcore.core.sampling import (SAMPLERS, coreset_size, extend_coreset, greedy_coreset, learned_proxies,
                                     random_subsample)
from patchcore.core.scoring import image_scores, segment_argmax
from patchcore.core.thresholds import NEAR_DUPLICATE_RATIO, fold_bounds, fold_of_images, repeat_ratios
from patchcore.io.images import ImageInput, collect_images, load_image, load_mask_image, read_image_size
from patchcore.params import documented, int_or_raw, param
from patchcore.search import (AUTO_INDEX, INDEX_KINDS, NearestNeighbourIndex, TorchIndex, describe_index, make_index,
                              resolve_index_kind)

RAW = "raw"

NO_SAMPLING = "none"


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
              "concatenates every tapped channel (anomalib's). Default per backbone: raw for Lite0.", parse=int_or_raw)
    patch_size: int = param(3, "Neighbourhood p of Eq. 1 (odd): patch features averaged over p x p. 1 finds "
                               "defects of a few pixels far better, and loses on wide defects and textures.")
    patch_stride: int = param(1, "Stride s on the patch grid (Eq. 3).")
    sampler: str = param("greedy_coreset", "Memory-bank subsampling: greedy_coreset, random, learned_proxies "
                                           "(Eq. 8, with the softmax weight exp(-distance)) or none.")
    coreset_ratio: float = param(0.1, "Share of patches kept in the memory bank.")
    projection_dim: int = param(128, "Dimension of the random projection the greedy coreset searches in.")
    index: str | NearestNeighbourIndex = param(
        AUTO_INDEX, "Nearest-neighbour search: auto (torch on CUDA, ivf on CPU), ivf (faiss: codes in the visited "
                    "cells, best candidates re-ranked exactly), torch (exact, in torch on the model's device), exact "
                    "(faiss), ivfflat, ivfpq, hnsw; in the API also an index instance, e.g. IVFIndex(n_probe=16).",
        parse=str)
    reweight: bool = param(True, "Eq. 7 score reweighting.")
    num_neighbours: int = param(9, "b of Eq. 7 (1: no reweighting).")
    holdout_fraction: float = param(
        0.0, "Share of good images held out to measure nominal scores; 0 (PatchCore's default) measures them "
             "by cross-fit instead, from every training image (threshold_folds).")
    threshold_folds: int = param(
        5, "Cross-fit folds for the nominal scores: each contiguous run of the training images (in file order, so "
           "consecutive frames and neighbouring crops stay together) is scored against the bank without its own "
           "patches. Used when nothing is held out and no validation images are given.")
    tile_size: int | None = param(
        1024, "Largest square of working pixels the network sees at once: larger images are cut into overlapping "
              "tiles whose patches join one memory bank and one map, so memory is bounded by the tile.")
    roi_mask: str | Path | np.ndarray | None = param(
        None, "Region of interest: a mask image, white where to look, stretched to each image's size; patches "
              "outside it neither enter the memory bank nor score, and their map is NaN.", parse=str)

    def _validate_method_params(self) -> None:
        if self.sampler not in (*SAMPLERS, NO_SAMPLING):
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {(*SAMPLERS, NO_SAMPLING)}")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if not isinstance(self.index, NearestNeighbourIndex) and self.index not in (AUTO_INDEX, *INDEX_KINDS):
            raise ValueError(f"unknown index {self.index!r}; choose from {', '.join((AUTO_INDEX, *INDEX_KINDS))}")
        if not (self.feature_dim is None or self.feature_dim == RAW
                or (isinstance(self.feature_dim, int) and self.feature_dim >= 1)):
            raise ValueError(f"feature_dim must be a positive integer, 'raw' or None, got {self.feature_dim!r}")
        if self.num_neighbours < 1:
            raise ValueError(f"num_neighbours must be >= 1, got {self.num_neighbours}")
        if self.threshold_folds < 2:
            raise ValueError(f"threshold_folds must be at least 2, got {self.threshold_folds}")
        if self.tile_size is not None and self.tile_size < 64:
            raise ValueError(f"tile_size must be at least 64 pixels, got {self.tile_size}")

    def _tile_size(self) -> int | None:
        return self.tile_size

    def _make_extractor(self, backbone: LoadedBackbone, layers: tuple[str, ...]) -> FeatureExtractor:
        # "raw": every tapped channel concatenated (anomalib's merge); an int: levels pooled to equal
        # shares of it (the official code's); None: the backbone's default, one or the other.
        feature_dim = self._merge(backbone)
        return FeatureExtractor(backbone, layers, self.patch_size, None if feature_dim == RAW else feature_dim,
                                stride=self.patch_stride)

    def _merge(self, backbone: LoadedBackbone) -> int | Literal["raw"]:
        return self.feature_dim or backbone.spec.default_feature_dim

    # -- fitting ----------------------------------------------------------------------------

    def _fit_items(self, items: list[ImageInput], cross_fit: bool) -> None:
        started = time.perf_counter()
        self.roi_mask_ = None if self.roi_mask is None else load_mask_image(self.roi_mask)
        self._region_cache: dict[tuple[str, tuple[int, int]], np.ndarray] = {}
        self.feature_dim_ = self.extractor_.feature_dim
        patches, patch_origins = self._collect_patches(items)
        if len(patches) == 0:
            raise ValueError("the region-of-interest mask leaves no patch to learn from")
        self.extraction_seconds_ = time.perf_counter() - started

        started = time.perf_counter()
        rows = self._subsample(patches)
        self.sampling_seconds_ = time.perf_counter() - started
        self.n_patches_seen_ = len(patches)
        if rows is None:
            bank, origins = patches, patch_origins
        elif rows.ndim == 2:  # learned proxies: new vectors, from no one image
            bank, origins = rows, None
        else:
            bank, origins = patches[rows], patch_origins[rows]
        self._bank_origins = origins
        self._set_bank(bank)
        self.coverage_radius_ = self._coverage_radius(patches)
        # Only where the nominal scores will come from the cross-fit, which a bank of learned proxies cannot have.
        can_cross_fit = cross_fit and origins is not None
        self.repeated_images_ = self._repeated_images(items, patches, patch_origins) if can_cross_fit else None

    def _repeated_images(self, items: list[ImageInput], patches: np.ndarray, origins: np.ndarray) -> dict | None:
        """Which training images another cross-fit fold already shows (their nominal scores would be too
        low): checked on up to 64 images against every patch of the other folds, on the scale of a
        1-pixel shift of a few of the images themselves. None with fewer than two folds."""
        folds = min(self.threshold_folds, len(items))
        if folds < 2:
            return None
        checked = repeat_ratios(patches, origins, fold_of_images(len(items), folds),
                                self._shift_distance(items, patches, origins), seed=self.seed)
        repeats = [image for image in checked if image.ratio < NEAR_DUPLICATE_RATIO]

        def name(i: int) -> str:
            return Path(items[i]).name if isinstance(items[i], (str, Path)) else f"image {i}"

        return {"checked": len(checked), "repeating": len(repeats),
                "examples": [[name(r.image), name(r.nearest_image)] for r in repeats[:3]]}

    def _shift_distance(self, items: list[ImageInput], patches: np.ndarray, origins: np.ndarray) -> float:
        """The median distance a 1-pixel shift moves the patches (n, D) of images `origins` (n,), on up to 4 of the `items`."""
        moved_by = []
        for position in range(0, len(items), max(1, len(items) // 4))[:4]:
            shifted = ImageChops.offset(load_image(items[position], self.bit_depth), 1, 1)
            moved = np.concatenate([rows for _, rows in self._patch_rows([shifted])])
            moved_by.append(np.linalg.norm(patches[origins == position] - moved, axis=1))
        return float(np.median(np.concatenate(moved_by)))

    def nominal_warnings(self) -> list[str]:
        warnings = super().nominal_warnings()
        repeated = self.repeated_images_
        if repeated and repeated["repeating"]:
            first, second = repeated["examples"][0]
            warnings.append(
                f"{repeated['repeating']} of {repeated['checked']} training images checked repeat images of "
                f"other cross-fit folds (e.g. {first} ~ {second}: closer than a 1-pixel shift of the same "
                "image): their nominal scores are lower than new good images' will be, so the threshold may flag "
                f"more than {self.false_alarm_rate:.1%} of good images; give --validation DIR with independent "
                "good images")
        return warnings

    def _collect_patches(self, items: list[ImageInput]) -> tuple[np.ndarray, np.ndarray]:
        """Every patch feature of the images (n, D) and the index of the image each came from (n,)."""
        # One array filled tile by tile, its size known from the image headers: the bank is never held twice.
        total = sum(self._n_patches(read_image_size(item)) for item in items)
        patches = np.empty((total, self.feature_dim_), dtype=np.float32)
        # Which image each row came from (tiles of several images arrive interleaved by size): the
        # cross-fit leaves a fold's own rows out.
        origins = np.empty(total, dtype=np.int64)
        filled = 0
        for image, rows in self._patch_rows(items):
            patches[filled : filled + len(rows)] = rows
            origins[filled : filled + len(rows)] = image
            filled += len(rows)
        if filled != total:
            raise ValueError(f"{filled} patches extracted where the image sizes promised {total}")
        return patches, origins

    def _coverage_radius(self, patches: np.ndarray, sample: int = 20_000) -> float:
        """How far the training patches lie from the bank at most (estimated on a seeded sample): the
        coreset's covering radius, which `partial_fit` keeps for new patches."""
        if len(patches) > sample:
            patches = patches[np.random.default_rng(self.seed).choice(len(patches), sample, replace=False)]
        distances, _ = self.index_.search(patches, 1)
        return float(distances.max())

    def _region(self, size: tuple[int, int]) -> np.ndarray | None:
        """The patch grid's region of interest for an image of `size` (None: every patch)."""
        if self.roi_mask_ is None:
            return None
        if ("grid", size) not in self._region_cache:
            self._region_cache["grid", size] = self.preprocessor_.region_grid(self.roi_mask_, size)
        return self._region_cache["grid", size]

    def _outside_pixels(self, size: tuple[int, int]) -> np.ndarray:
        """Which pixels of an image of `size` lie outside the region of interest (computed once per size)."""
        if ("pixels", size) not in self._region_cache:
            inside = np.asarray(Image.fromarray(self.roi_mask_).resize(size, Image.NEAREST))
            self._region_cache["pixels", size] = ~inside
        return self._region_cache["pixels", size]

    def _n_patches(self, size: tuple[int, int]) -> int:
        region = self._region(size)
        if region is not None:
            return int(region.sum())
        rows, columns = self.preprocessor_.grid_size(self.preprocessor_.network_size(size))
        return rows * columns

    def _inside(self, size: tuple[int, int], place: tuple[int, int], shape: tuple[int, int]) -> np.ndarray | None:
        """Which patches of a tile's core lie in the region of interest (None: all); on the host, so that
        asking whether any does never waits for the device."""
        region = self._region(size)
        if region is None:
            return None
        return np.ascontiguousarray(region[place[0] : place[0] + shape[0], place[1] : place[1] + shape[1]])

    @torch.inference_mode()
    def _patch_rows(self, items: list[ImageInput]) -> Iterator[tuple[int, np.ndarray]]:
        """(index of the image in `items`, patch features (n, D)) of every tile core, inside the region of interest."""
        first = 0
        for chunk, pictures in self._picture_chunks(items, "features"):
            for entries, batch in self._network_batches(pictures):
                features = self._network(batch).float().cpu()  # bank rows live in host memory
                for (i, tile), grid in zip(entries, features):
                    top, bottom, left, right = tile.core
                    core = grid[top:bottom, left:right]
                    inside = self._inside(pictures[i].size, tile.place, core.shape[:2])
                    rows = core.reshape(-1, core.shape[-1]) if inside is None else core[torch.from_numpy(inside)]
                    yield first + i, rows.numpy()
            first += len(chunk)

    def _set_bank(self, bank: np.ndarray, index_state: np.ndarray | None = None) -> None:
        """The bank and its search index: fitted, or restored from a saved state without training again."""
        self.memory_bank_ = np.ascontiguousarray(bank, dtype=np.float32)
        if isinstance(self.index, NearestNeighbourIndex):
            index = clone(self.index)
        else:
            index = make_index(resolve_index_kind(self.index, self.device_))
        if index_state is None or not index.saves_state:  # 'auto' saved on a CPU may load on a GPU: rebuilt
            self.index_ = index.fit(self.memory_bank_).to(self.device_)
        else:
            self.index_ = index.restore(index_state, self.memory_bank_.shape[1])
        # Eq. 7 reads bank rows where the search runs; a torch index already holds the bank there.
        self._bank_tensor = (self.index_.bank_ if isinstance(self.index_, TorchIndex)
                             else torch.from_numpy(self.memory_bank_).to(self.device_))

    def _subsample(self, patches: np.ndarray) -> np.ndarray | None:
        """Indices of the patches the bank keeps (None: all of them), or for learned proxies, which are
        not patches, the proxies themselves (2-D)."""
        if self.sampler == NO_SAMPLING or self.coreset_ratio >= 1.0:
            return None
        n_select = coreset_size(len(patches), self.coreset_ratio)
        if self.sampler == "random":
            return random_subsample(len(patches), n_select, self.seed)
        if self.sampler == "learned_proxies":
            return learned_proxies(patches, n_select, seed=self.seed, device=self.device_, progress=self.progress)
        return greedy_coreset(patches, n_select, self.projection_dim, self.seed, self.device_, progress=self.progress)

    def _cross_fit_nominal(self, items: list[ImageInput]) -> str:
        """Nominal scores of every training image: each of `threshold_folds` contiguous runs of images is
        predicted with the bank minus the rows that came from its own images."""
        predictions = self._cross_fit_predictions(items, first=0)
        if predictions is None:  # learned proxies come from no one image: nothing to leave out
            return super()._cross_fit_nominal(items)
        self._fit_nominal_statistics(predictions)
        return f"cross-fit over {min(self.threshold_folds, len(items))} folds of the training images"

    def _cross_fit_predictions(self, items: list[ImageInput], first: int, folds: int | None = None) -> list | None:
        """Predictions of `items` (bank rows of origin `first` + i), each of `folds` (default
        `threshold_folds`) contiguous runs against the bank without that run's own rows; None when that
        cannot be done (one image, or a bank of learned proxies)."""
        folds = min(folds or self.threshold_folds, len(items))
        if folds < 2 or self._bank_origins is None:
            return None
        full = self.memory_bank_, self.index_, self._bank_tensor
        origins = self._bank_origins
        bounds = first + fold_bounds(len(items), folds)
        predictions = []
        try:
            for start, stop in zip(bounds[:-1], bounds[1:]):
                self._set_bank(full[0][(origins < start) | (origins >= stop)])
                predictions += list(self.iter_predict(items[start - first : stop - first]))
        finally:
            self.memory_bank_, self.index_, self._bank_tensor = full
        return predictions

    def partial_fit(self, images: ImageInput | Sequence[ImageInput]) -> "PatchCore":
        """Add good images to a fitted model without refitting it.

        Their patches continue the greedy coreset with the current bank as the points already chosen: a
        patch is added only while it lies farther from the bank (and from the patches added before it)
        than `coverage_radius_`, the distance within which the fit's coreset holds every training patch,
        and at most `coreset_ratio` of the new patches are added. Old rows are never removed. Nominal
        scores for the threshold come as in `fit`: a `holdout_fraction` share of the new images held out,
        or a cross-fit over the new images (each fold against the bank without its own new rows).
        """
        self._check_fitted()
        if self._bank_origins is None:
            raise ValueError("a bank of learned proxies cannot be extended (they come from no image): refit")
        items = collect_images(images, training=True)
        train_items, holdout_items = self._split_holdout(items)
        first = self.n_train_images_
        patches, origins = self._collect_patches(train_items)
        distances, _ = self.index_.search(patches, 1)
        limit = len(patches) if self.sampler == NO_SAMPLING else coreset_size(len(patches), self.coreset_ratio)
        added = extend_coreset(patches, distances[:, 0], limit, self.coverage_radius_)
        self._bank_origins = np.concatenate([self._bank_origins, first + origins[added]])
        self._set_bank(np.concatenate([self.memory_bank_, patches[added]]))
        if holdout_items:
            predictions = list(self.iter_predict(holdout_items))
            how = "held-out new images"
        else:
            # Runs as long as the fit's (its images / threshold_folds), so that near-twins among the new
            # images are left out together, as they were at fit time; at least two.
            folds = max(2, round(self.threshold_folds * len(train_items) / (first + len(train_items))))
            predictions = self._cross_fit_predictions(train_items, first, folds) or []
            how = f"cross-fit over {folds} runs of the new images"
        self._add_nominal_statistics(predictions)
        if predictions:
            self.nominal_source_ += f"; {len(predictions)} from an update ({how})"
        self.n_train_images_ += len(train_items)
        self.n_patches_seen_ += len(patches)
        previous = self.change_ if self.change_.get("action") == "update" else {}
        self.change_ = {"action": "update",
                        "images_added": previous.get("images_added", 0) + len(train_items),
                        "images_held_out": previous.get("images_held_out", 0) + len(holdout_items),
                        "rows_added": previous.get("rows_added", 0) + len(added)}
        self.rows_added_ = len(added)
        return self

    # -- inference --------------------------------------------------------------------------

    def patch_features(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Locally aware patch features of images, (n_patches, feature_dim): what the bank is built from."""
        self._check_fitted()
        return np.concatenate([rows for _, rows in self._patch_rows(collect_images(images))])

    @torch.inference_mode()  # the features are inference tensors: small ops on them cost less in this mode
    def _score_pictures(self, pictures: list[Picture]) -> list[tuple[float, torch.Tensor]]:
        """Patch distances tile by tile into each picture's grid (memory bounded by a batch of tiles), the
        worst patch of each tile kept, then of each picture; then Eq. 7 on that patch."""
        preprocessor = self.preprocessor_
        sizes = [picture.size for picture in pictures]
        # Everything stays on the model's device (features, search, Eq. 7, maps), and nothing waits for it
        # until the scores are read: per-tile choices are tensor ops, never Python values.
        grids = [torch.zeros(preprocessor.grid_size(preprocessor.network_size(size)), device=self.device_)
                 for size in sizes]
        worst_values, worst_features, worst_found, owners = [], [], [], []
        for entries, batch in self._network_batches(pictures):
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
        scores = image_scores(torch.cat(worst_features)[worst][:, None], values[worst][:, None],
                              torch.cat(worst_found)[worst][:, None],
                              self._bank_tensor, self.index_.search_tensor, self.num_neighbours, self.reweight)
        return list(zip(scores.tolist(), grids))

    def _maps(self, grids: list[torch.Tensor], sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        maps = super()._maps(grids, sizes)
        if self.roi_mask_ is not None:
            for amap, size in zip(maps, sizes):
                amap[self._outside_pixels(size)] = np.nan
        return maps

    # -- persistence ------------------------------------------------------------------------

    def _fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        state = {"n_patches_seen": self.n_patches_seen_, "coverage_radius": self.coverage_radius_,
                 "repeated_training_images": self.repeated_images_}
        arrays = {"memory_bank": self.memory_bank_}
        if self.roi_mask_ is not None:
            arrays["roi_mask"] = self.roi_mask_
        if self.index_.saves_state:  # trained indexes are saved, so loading never re-trains them
            arrays["search_index"] = self.index_.state()
        return state, arrays

    def _resolved_params(self) -> dict[str, Any]:
        index = self.index if isinstance(self.index, str) else describe_index(self.index)
        roi = None if self.roi_mask is None else ("array" if isinstance(self.roi_mask, np.ndarray) else str(self.roi_mask))
        return {"feature_dim": RAW if self._merge(self.backbone_) == RAW else self.feature_dim_, "index": index,
                "roi_mask": roi}

    @classmethod
    def _params_from_manifest(cls, params: dict[str, Any]) -> dict[str, Any]:
        params = super()._params_from_manifest(params)
        if isinstance(params.get("index"), dict):
            params["index"] = make_index(**params["index"])
        return params

    def _restore_state(self, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        bank = arrays["memory_bank"]
        self.feature_dim_ = self.extractor_.feature_dim
        if bank.ndim != 2 or bank.shape[1] != self.feature_dim_:
            raise ValueError(f"memory bank shape {bank.shape} does not match feature_dim {self.feature_dim_}")
        self._set_bank(bank, arrays.get("search_index"))
        self.roi_mask_ = arrays.get("roi_mask")
        self._region_cache = {}
        if self.roi_mask_ is not None:
            self.roi_mask = self.roi_mask_  # the mask itself travels with the model, not its original path
        self.n_patches_seen_ = manifest["n_patches_seen"]
        # Older models did not record it: 0 means partial_fit adds up to coreset_ratio of the new patches.
        self.coverage_radius_ = float(manifest.get("coverage_radius", 0.0))
        self.repeated_images_ = manifest.get("repeated_training_images")  # not checked before 2026-11-30
        # Which image each row came from is not saved: every row is an old one to a later partial_fit.
        self._bank_origins = None if self.sampler == "learned_proxies" else np.full(len(bank), -1, dtype=np.int64)


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
