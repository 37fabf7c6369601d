"""Does calibrating each map position by the good images' maps there put more map maxima on the defect?

    python benchmarks/position_calibration.py data/offline elpv_module_mono
    python benchmarks/position_calibration.py data/offline elpv_module_mono_small --layers level1,level2 --coreset-ratio 0.025

A trial for aligned products (the modules' cells sit at the same pixels in every image): fits on the
category's train/good images, takes the cross-fit's maps of those good images (each from a bank without
its own fold), and calibrates each test map position by position with their mean, standard deviation or
maximum there. Prints, per calibration, the share of defective images whose map maximum lies on the
defect (as `patchcore evaluate` counts it) and the AUROC of the maps' maxima as image scores.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score

from patchcore import PatchCore
from patchcore.data.categories import load_category, load_mask
from patchcore.evaluation.evaluate import peak_on_mask
from map_maxima import add_model_options  # benchmarks/map_maxima.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    args = parser.parse_args()
    category = load_category(args.root, args.category)
    train = list(category.train_images)
    model = PatchCore(layers=tuple(args.layers.split(",")) if args.layers else None,
                      coreset_ratio=args.coreset_ratio).fit(train)
    good = np.stack([p.anomaly_map for p in model._cross_fit_predictions(train, first=0)])
    mean, spread, highest = good.mean(0), good.std(0), good.max(0)
    floor = np.median(spread)  # keeps positions where the good maps agree from dividing by ~0
    calibrations = {
        "none": lambda amap: amap,
        "minus mean": lambda amap: amap - mean,
        "z-score": lambda amap: (amap - mean) / (spread + floor),
        "z-score, stats blurred 8 px": lambda amap: ((amap - gaussian_filter(mean, 8))
                                                     / (gaussian_filter(spread, 8) + floor)),
        "minus maximum": lambda amap: amap - highest,
        "ratio to mean": lambda amap: amap / mean,
    }
    labels, maps, masks = [], [], []
    for sample, prediction in zip(category.test_samples, model.iter_predict([s.image for s in category.test_samples])):
        amap = prediction.anomaly_map
        labels.append(int(sample.is_anomalous))
        maps.append(amap)
        masks.append(load_mask(sample.mask, (amap.shape[1], amap.shape[0])) if sample.mask else None)
    print(f"{args.category}: {len(good)} good maps from the cross-fit, {len(maps)} test images")
    for name, calibrate in calibrations.items():
        calibrated = [calibrate(amap) for amap in maps]
        hits = [peak_on_mask(amap, mask) for amap, mask in zip(calibrated, masks) if mask is not None]
        auroc = roc_auc_score(labels, [np.nanmax(amap) for amap in calibrated])
        print(f"{name:28s} map max on defect {100 * np.mean(hits):5.1f} %   map-maximum AUROC {100 * auroc:5.1f}")


if __name__ == "__main__":
    main()
