"""Does scaling each patch distance by its nearest bank row's own nominal spread put more map maxima on the defect?

    python benchmarks/bank_calibration.py data/offline elpv_module_mono_small
    python benchmarks/bank_calibration.py data/offline elpv_module_mono_small --layers level1,level2 --coreset-ratio 0.025

A trial. Some good structures vary more than others (a cell's edge more than its plain inside), so good
patches of those lie farther from the bank and their maps peak there. Per-position calibration needs many
good maps per pixel (it failed, see position_calibration.py); this pools by feature instead. Every training
patch is searched in the bank without its own cross-fit fold: the distance at which held-out good patches
find each bank row is that row's nominal spread (averaged with the global mean, weight `--prior`, so rows
that few patches chose stay near it). A test patch's distance to its nearest row is then divided by
(or reduced by) that row's spread. Prints, per variant, the share of defective images whose map maximum
lies on the defect (as `patchcore evaluate` counts it), the map-maximum AUROC and the image AUROC.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from patchcore import PatchCore
from patchcore.core.crossfit import fold_bounds
from patchcore.data.categories import load_category, load_mask
from patchcore.evaluation.evaluate import peak_on_mask
from patchcore.search import ExactIndex
from map_maxima import add_model_options  # benchmarks/map_maxima.py, beside this script


def held_out_nearest(model: PatchCore, patches: np.ndarray, origins: np.ndarray, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Each training patch's distance to, and row of, its nearest bank row outside its own cross-fit fold."""
    bank, bank_origins = model.memory_bank_, model._bank_origins
    distances, rows = np.empty(len(patches), np.float32), np.empty(len(patches), np.int64)
    bounds = fold_bounds(n_images, model.threshold_folds)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        kept = np.flatnonzero((bank_origins < start) | (bank_origins >= stop))
        queried = (origins >= start) & (origins < stop)
        found_distances, found = ExactIndex().fit(bank[kept]).search(patches[queried], 1)
        distances[queried], rows[queried] = found_distances[:, 0], kept[found[:, 0]]
    return distances, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--prior", type=float, nargs="+", default=[5.0, 50.0],
                        help="weight of the global mean in each row's spread, in patches")
    args = parser.parse_args()
    category = load_category(args.root, args.category)
    train = list(category.train_images)
    model = PatchCore(layers=tuple(args.layers.split(",")) if args.layers else None,
                      coreset_ratio=args.coreset_ratio).fit(train)
    patches, origins = model._collect_patches(train)
    distances, rows = held_out_nearest(model, patches, origins, len(train))
    del patches
    n_rows = len(model.memory_bank_)
    counts = np.bincount(rows, minlength=n_rows)
    sums = np.bincount(rows, weights=distances, minlength=n_rows)
    overall = float(distances.mean())
    print(f"{args.category}: bank {n_rows} rows, {len(distances)} held-out good patches, mean distance {overall:.2f}; "
          f"rows chosen by none {np.mean(counts == 0):.0%}, median patches per row {np.median(counts):.0f}")

    search = model.index_.search_tensor
    variants: dict[str, object] = {"none": None}
    for prior in args.prior:
        spread = torch.from_numpy(((sums + prior * overall) / (counts + prior)).astype(np.float32)).to(model.device_)
        variants[f"divided by spread, prior {prior:g}"] = lambda d, r, s=spread: d * overall / s[r]
        variants[f"minus spread, prior {prior:g}"] = lambda d, r, s=spread: d - s[r] + overall

    test = category.test_samples
    labels = [int(sample.is_anomalous) for sample in test]
    for name, calibrate in variants.items():
        def calibrated_search(queries: torch.Tensor, k: int = 1, calibrate=calibrate):
            found_distances, found = search(queries, k)
            if calibrate is not None and k == 1:  # the patch distances of the map, not Eq. 7's bank searches
                found_distances = calibrate(found_distances, found)
            return found_distances, found

        model.index_.search_tensor = calibrated_search
        hits, peaks, scores = [], [], []
        for sample, prediction in zip(test, model.iter_predict([s.image for s in test])):
            amap = prediction.anomaly_map
            peaks.append(np.nanmax(amap))
            scores.append(prediction.score)
            if sample.mask:
                hits.append(peak_on_mask(amap, load_mask(sample.mask, (amap.shape[1], amap.shape[0]))))
        print(f"{name:32s} map max on defect {100 * np.mean(hits):5.1f} %   map-maximum AUROC "
              f"{100 * roc_auc_score(labels, peaks):5.1f}   image AUROC {100 * roc_auc_score(labels, scores):5.1f}")


if __name__ == "__main__":
    main()
