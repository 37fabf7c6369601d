"""Where PatchCore's time goes on this machine: fit (features, coreset) and predict (backbone, search, map).

    python benchmarks/speed.py data/offline/brick --coreset-ratio 0.1 --repeats 3

Measured in one run on the same images: the backbone forward alone (the floor no pipeline can
beat: the full network, and the network up to the deepest tap, which is what PatchCore runs), then
predict at batch 1 and batch 16 split into backbone + patch features, nearest-neighbour search
with Eq. 7, and anomaly maps. Prints a table and the ratios end-to-end / backbone.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from patchcore.core.batches import images_per_pass
from patchcore.core.scoring import image_scores
from patchcore.data.categories import load_category
from patchcore.evaluation.evaluate import machine_description
from patchcore.io.images import load_image
from patchcore.core.patchcore import PatchCore
from timing import best_of  # benchmarks/timing.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("category", type=Path, help="A category folder in MVTec layout.")
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=32, help="Test images timed per batch size.")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    category = load_category(args.category.parent, args.category.name)
    model = PatchCore(backbone=args.backbone, coreset_ratio=args.coreset_ratio, holdout_fraction=0.0)
    started = time.perf_counter()
    model.fit(list(category.train_images))
    loop = model._loop()
    fit_seconds = time.perf_counter() - started
    fit_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    pictures = [load_image(s.image) for s in category.test_samples[: args.images]]
    batch_all = torch.stack([model.preprocessor_(p) for p in pictures])
    full_network = model.backbone_.module
    rows = []
    for batch_size in (1, 16):
        batches = [batch_all[i : i + batch_size] for i in range(0, len(batch_all), batch_size)]
        n_images = len(batch_all)

        def full_forward() -> None:
            with torch.inference_mode():
                for batch in batches:
                    full_network(batch)

        def features() -> list[torch.Tensor]:
            # In the passes predict makes of a batch (on a CPU at most two 256 px images: faster per image).
            return [torch.cat([model.extractor_(part).float()
                               for part in batch.split(images_per_pass(len(batch), *batch.shape[-2:], batch.device))])
                    for batch in batches]

        feature_batches = features()

        def search() -> None:
            bank = torch.from_numpy(model.memory_bank_)
            for grid in feature_batches:
                n, h, w, d = grid.shape
                patches = grid.reshape(n, h * w, d)
                distances, nearest = model.index_.search_tensor(patches.reshape(-1, d), k=1)
                image_scores(patches, distances[:, 0].reshape(n, -1), nearest[:, 0].reshape(n, -1), bank,
                             model.index_.search_tensor, model.num_neighbours, model.reweight)

        grids = [grid for _, grid, _ in model._score_pictures([loop.picture(p) for p in pictures], loop)]

        def maps() -> None:
            model._maps(grids, [picture.size for picture in pictures])

        def end_to_end() -> None:
            for _ in model.iter_predict(pictures):
                pass

        model.batch_size = batch_size
        times = {
            "full backbone": best_of(args.repeats, full_forward),
            "backbone to deepest tap + patch features": best_of(args.repeats, features),
            "search + Eq. 7": best_of(args.repeats, search),
            "anomaly maps": best_of(args.repeats, maps),
            "predict end to end (incl. image decoding)": best_of(args.repeats, end_to_end),
        }
        for stage, seconds in times.items():
            rows.append((batch_size, stage, 1000 * seconds / n_images))
        floor = times["backbone to deepest tap + patch features"]
        ratio = times["predict end to end (incl. image decoding)"] / floor
        rows.append((batch_size, "ratio end to end / (backbone + patch features)", ratio))

    print(f"Machine: {machine_description()}. Backbone {args.backbone}, coreset {args.coreset_ratio:.0%}, "
          f"bank {model.memory_bank_.shape[0]} x {model.memory_bank_.shape[1]} from {model.n_patches_seen_} patches.")
    print(f"Fit: {fit_seconds:.1f} s total ({model.extraction_seconds_:.1f} s features, "
          f"{model.sampling_seconds_:.1f} s coreset) for {model.n_train_images_} images; peak RSS {fit_peak_mb:.0f} MB")
    print("\n| batch | stage | ms / image (ratio for the last row) |\n|---|---|---|")
    for batch_size, stage, value in rows:
        print(f"| {batch_size} | {stage} | {value:.2f} |")
    print(f"\nPeak RSS after predict: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
