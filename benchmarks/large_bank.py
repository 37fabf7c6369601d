"""Fit on thousands of images: a bank of millions of patches, with time per phase and peak memory.

    python benchmarks/large_bank.py --images 2500 --coreset-ratio 0.01

The images are seeded random 128 px crops of scikit-image's brick, grass and gravel photos
(arrays in memory, so disk speed does not enter). Each yields 28 x 28 patches at 224 px, so
2,500 images make a bank of 1,960,000 patches before subsampling.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from patchcore.evaluation.evaluate import machine_description
from patchcore.core.patchcore import PatchCore
from patchcore.data.offline import texture_photo


def random_crops(n_images: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    photos = [texture_photo(name) for name in ("brick", "grass", "gravel")]
    crops = []
    for _ in range(n_images):
        photo = photos[rng.integers(len(photos))]
        top, left = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
        crops.append(photo[top : top + size, left : left + size])
    return crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2500)
    parser.add_argument("--coreset-ratio", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    crops = random_crops(args.images, 128, args.seed)
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = PatchCore(coreset_ratio=args.coreset_ratio, holdout_fraction=0.0, batch_size=16, progress=True)
    started = time.perf_counter()
    model.fit(crops)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    full_bank_mb = model.n_patches_seen_ * model.feature_dim_ * 4 / 2**20
    print(f"Machine: {machine_description()}. {args.images} images -> {model.n_patches_seen_} patches x "
          f"{model.feature_dim_} (full float32 bank {full_bank_mb:.0f} MB), coreset {args.coreset_ratio:.0%} -> "
          f"{len(model.memory_bank_)} entries.")
    print(f"fit {seconds:.1f} s: features {model.extraction_seconds_:.1f} s, coreset {model.sampling_seconds_:.1f} s")
    print(f"peak RSS {peak_mb:.0f} MB ({before_mb:.0f} MB before fitting: the crops and libraries); "
          f"growth during fit {peak_mb - before_mb:.0f} MB = {(peak_mb - before_mb) / full_bank_mb:.2f} x the full bank")


if __name__ == "__main__":
    main()
