"""Collect what threshold choices are measured on: per category, the nominal scores of the training images by
cross-fit at several fold counts (from one fit's extracted patches), and the final model's scores and map peaks of
the held-out test images (good and defective), as JSON.

    python benchmarks/calibration_data.py data/offline --out calibration_data.json --folds 5,10,20

`benchmarks/calibration.py` reads the file and prints the tables of docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from patchcore import PatchCore
from patchcore.data.categories import discover_categories, load_category
from patchcore.io.files import atomic_write_bytes


# Share of a fold bank's rows kept when measuring how scores grow as the bank thins.
THINNED = 0.75


def thinned_cross_fit(model: PatchCore, patches, folds: int, keep: float) -> tuple[list[float], list]:
    """The cross-fit of `PatchCore._cross_fit`, each fold bank thinned to a seeded `keep` share of its rows."""
    from patchcore.core.bank import MemoryBank
    from patchcore.core.calibration import summarise
    from patchcore.core.crossfit import fold_bounds, image_runs
    from patchcore.core.patchcore import CROSS_FIT_ROWS

    rng = np.random.default_rng(0)
    bounds = fold_bounds(len(patches.image_sizes), folds)
    scores, maps = [], []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        fold_bank = model.bank_.without_images(start, stop)
        kept = np.sort(rng.choice(len(fold_bank), round(keep * len(fold_bank)), replace=False))
        thinned = MemoryBank(fold_bank.rows[kept], fold_bank.origins[kept]).indexed(model._new_index(), model.device_)
        for image_from, image_to in image_runs(patches.origins, start, stop, CROSS_FIT_ROWS):
            run_scores, grids = model._score_extracted(patches, image_from, image_to, thinned)
            scores += run_scores
            maps += [summarise(amap) for amap in model._maps(grids, patches.image_sizes[image_from:image_to])]
    return scores, maps


def collect(root: Path, name: str, fold_counts: list[int]) -> dict:
    category = load_category(root, name)
    model = PatchCore(progress=False)
    extracted = {}
    cross_fit = model._cross_fit

    def keeping_patches(patches, bank, first, folds):  # the patches fit extracted, to cross-fit again below
        extracted["patches"] = patches
        return cross_fit(patches, bank, first, folds)

    model._cross_fit = keeping_patches
    started = time.perf_counter()
    model.fit(list(category.train_images))
    fit_seconds = time.perf_counter() - started
    del model._cross_fit
    nominal = {}
    for folds in fold_counts:
        folds = min(folds, model.n_train_images_)
        scores, maps = model._cross_fit(extracted["patches"], model.bank_, 0, folds)
        nominal[str(folds)] = {"scores": scores, "peaks": [peak for _, peak in maps],
                               "typical": [median for median, _ in maps]}
    # The bank's density effect, measured: each fold scored against its fold bank thinned to THINNED of its rows.
    scores, maps = thinned_cross_fit(model, extracted["patches"], min(5, model.n_train_images_), THINNED)
    nominal["thinned"] = {"scores": scores, "peaks": [peak for _, peak in maps], "keep": THINNED}
    test = [{"image": str(sample.image), "defect_type": sample.defect_type, "score": prediction.score,
             "peak": float(np.nanmax(prediction.anomaly_map))}
            for sample, prediction in zip(category.test_samples,
                                          model.iter_predict([s.image for s in category.test_samples]))]
    return {"category": name, "n_train": model.n_train_images_, "fit_seconds": fit_seconds,
            "train_images": [str(path) for path in category.train_images], "nominal": nominal, "test": test}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--categories", default="all")
    parser.add_argument("--folds", default="5,10,20")
    args = parser.parse_args()
    names = discover_categories(args.root) if args.categories == "all" else args.categories.split(",")
    folds = [int(text) for text in args.folds.split(",")]
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in names:
        if name in results:
            continue
        results[name] = collect(args.root, name, folds)
        atomic_write_bytes(args.out, json.dumps(results).encode())
        print(f"{name}: {results[name]['n_train']} training images, fit {results[name]['fit_seconds']:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
