"""The cross-fit: folds of the training images (interleaved, or contiguous runs in file order), and the check that
a fold's images do not repeat another fold's (their nominal scores would be too low)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageChops

from patchcore.core.bank import TrainingPatches
from patchcore.search import exact_nearest

# Training images whose 1-pixel shift measures the scale of the repeat check.
SHIFT_SAMPLES = 4

# A training image repeats others when, at the median, its patches lie closer to another cross-fit fold's
# patches than half the distance a 1-pixel shift of the image moves them. Measured (docs/results.md):
# independent ELPV cells 1.7-2.3, cells with their copy in another fold 0.0, overlapping crops of one
# texture photo 0.08-0.4.
NEAR_DUPLICATE_RATIO = 0.5


def fold_bounds(n_images: int, folds: int) -> np.ndarray:
    """The cross-fit's `folds` contiguous runs of `n_images` images in file order: run f is images
    bounds[f] to bounds[f + 1] - 1."""
    return np.linspace(0, n_images, folds + 1).round().astype(int)


def fold_of_images(n_images: int, folds: int, interleaved: bool = False) -> np.ndarray:
    """The cross-fit fold of each of `n_images` images: image i in fold i mod `folds` when `interleaved`, else
    in the contiguous run of `fold_bounds` that holds it."""
    if interleaved:
        return np.arange(n_images) % folds
    return np.searchsorted(fold_bounds(n_images, folds)[1:], np.arange(n_images), side="right")


def fold_runs(n_images: int, folds: int, interleaved: bool) -> tuple[np.ndarray, np.ndarray]:
    """(the number each image takes so that its fold is a contiguous run: fold order, file order within a fold;
    the runs' bounds: fold f is numbers bounds[f] to bounds[f + 1] - 1)."""
    fold = fold_of_images(n_images, folds, interleaved)
    numbers = np.empty(n_images, dtype=np.int64)
    numbers[np.argsort(fold, kind="stable")] = np.arange(n_images)
    return numbers, np.concatenate([[0], np.cumsum(np.bincount(fold, minlength=folds))])


def image_runs(origins: np.ndarray, start: int, stop: int, max_rows: int) -> Iterator[tuple[int, int]]:
    """Runs of images start to stop - 1, in order, holding at most `max_rows` patches of `origins` (or one image):
    a fold scored a run at a time keeps its memory bounded."""
    counts = np.bincount(origins, minlength=stop)[start:stop]
    run_start, rows = start, 0
    for image, count in enumerate(counts, start):
        if rows and rows + count > max_rows:
            yield run_start, image
            run_start, rows = image, 0
        rows += count
    yield run_start, stop


def shift_samples(n_images: int) -> range:
    """Which of `n_images` training images measure the 1-pixel shift (kept decoded from the one pass over them)."""
    return range(0, n_images, max(1, n_images // SHIFT_SAMPLES))[:SHIFT_SAMPLES]


def shift_distance(patches: TrainingPatches, images: dict[int, Image.Image],
                   embed: Callable[[Image.Image], np.ndarray]) -> float:
    """The median distance a 1-pixel shift moves the patches of the numbered training `images`; `embed` gives an
    image's patches as fit extracted them."""
    moved_by = [np.linalg.norm(patches.features[patches.origins == number] - embed(ImageChops.offset(image, 1, 1)),
                               axis=1)
                for number, image in images.items()]
    return float(np.median(np.concatenate(moved_by)))


def repeat_report(patches: TrainingPatches, names: list[str], folds: int, shift: float, seed: int = 0,
                  interleaved: bool = False) -> dict:
    """Which training images another cross-fit fold already shows (their nominal scores would be too low),
    checked on up to 64 images against every patch of the other folds, on the scale of a 1-pixel `shift`."""
    checked = repeat_ratios(patches.features, patches.origins, fold_of_images(len(names), folds, interleaved), shift,
                            seed=seed)
    repeats = [image for image in checked if image.ratio < NEAR_DUPLICATE_RATIO]
    return {"checked": len(checked), "repeating": len(repeats), "folds": "interleaved" if interleaved else "contiguous",
            "examples": [[names[r.image], names[r.nearest_image]] for r in repeats[:3]]}


def repeat_warnings(report: dict | None, false_alarm_rate: float) -> list[str]:
    """What a `repeat_report` means for the threshold, as a warning (none when nothing repeats)."""
    if not report or not report["repeating"]:
        return []
    first, second = report["examples"][0]
    return [f"{report['repeating']} of {report['checked']} training images checked repeat images of other "
            f"cross-fit folds (e.g. {first} ~ {second}: closer than a 1-pixel shift of the same image): their "
            "nominal scores are lower than new good images' will be, so the threshold may flag more than "
            f"{false_alarm_rate:.1%} of good images; give --validation DIR with independent good images"]


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
