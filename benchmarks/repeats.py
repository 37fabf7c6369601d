"""Do training images repeat images of other cross-fit folds? The ratio behind fit's repeat warning.

    python benchmarks/repeats.py data/offline elpv_mono                       # the images as they are
    python benchmarks/repeats.py data/offline elpv_mono --variant copies      # each image twice
    python benchmarks/repeats.py data/offline elpv_mono --variant shifted     # copies moved 2 px, noise 2
    python benchmarks/repeats.py data/offline elpv_mono --variant noisy       # copies with noise 3
    python benchmarks/repeats.py data/offline gravel

For the first 40 training images of the category (the variant adds altered copies after them, so
each copy lands in another of the 5 contiguous folds), each image's ratio: the median distance of 32
of its patches to every patch of the other folds, over the median distance a 1-pixel shift moves an
image's patches (`patchcore.core.crossfit.repeat_ratios`, as `fit` runs it). Below 0.5 an image
repeats another.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from patchcore import PatchCore
from patchcore.core.bank import TrainingPatches
from patchcore.core.crossfit import NEAR_DUPLICATE_RATIO, fold_of_images, repeat_ratios, shift_distance, shift_samples
from patchcore.data.categories import load_category


def altered(pixels: np.ndarray, shift: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    moved = np.roll(pixels, shift, axis=(0, 1)).astype(np.float32) + rng.normal(0, noise, pixels.shape)
    return moved.clip(0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("category")
    parser.add_argument("--variant", choices=["none", "copies", "shifted", "noisy"], default="none")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in load_category(args.root, args.category).train_images[:40]]
    if args.variant != "none":
        shift, noise = {"copies": (0, 0.0), "shifted": (2, 2.0), "noisy": (0, 3.0)}[args.variant]
        images += [altered(pixels, shift, noise, rng) for pixels in images]
    model = PatchCore(coreset_ratio=0.01, progress=False).fit(images)
    rows = [model.patch_features([pixels]) for pixels in images]
    patches = np.concatenate(rows)
    origins = np.repeat(np.arange(len(images)), [len(r) for r in rows])
    shift = shift_distance(TrainingPatches(patches, origins, np.zeros((len(patches), 2)), []),
                           {i: Image.fromarray(images[i]) for i in shift_samples(len(images))}, model._embed)
    ratios = np.array([image.ratio for image in repeat_ratios(
        patches, origins, fold_of_images(len(images), min(model.threshold_folds, len(images))), shift)])
    print(f"{args.category} {args.variant}: {len(images)} images, 1-px shift distance {shift:.1f}, ratio median "
          f"{np.median(ratios):.2f}, min {ratios.min():.2f}; {int((ratios < NEAR_DUPLICATE_RATIO).sum())} of "
          f"{len(ratios)} repeat another (fit said: {model.repeated_images_['repeating']})")


if __name__ == "__main__":
    main()
