"""The default taps, the finer taps, and the ensemble of the two models, fitted once, on the same categories.

    python benchmarks/tap_ensemble.py data/offline elpv_module_mono_small elpv_module_poly_small

The ensemble (`patchcore.baselines.Ensemble`) averages the two models' scores, each z-scored with its
own cross-fit good scores, and their maps, each divided by its good maps' peak. Prints image AUROC,
pixel AUROC, PRO and the share of defective images whose map maximum lies on the defect, per model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from patchcore import PatchCore
from patchcore.baselines.ensemble import Ensemble
from patchcore.data.categories import load_category
from patchcore.evaluation.evaluate import evaluate_fitted

SETTINGS = {"default taps": {}, "finer taps (level1 + level2, 2.5 %)": {"layers": ("level1", "level2"),
                                                                         "coreset_ratio": 0.025}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("categories", nargs="+")
    args = parser.parse_args()
    print("| category | model | image AUROC | pixel AUROC | PRO | map max on defect % | fit s |\n|---|---|---|---|---|---|---|")
    for name in args.categories:
        category = load_category(args.root, name)
        models, seconds = {}, {}
        for label, params in SETTINGS.items():
            started = time.perf_counter()
            models[label] = PatchCore(**params).fit(list(category.train_images))
            seconds[label] = time.perf_counter() - started
        models["ensemble of both"] = Ensemble.from_fitted(list(models.values()))
        seconds["ensemble of both"] = sum(seconds.values())
        for label, model in models.items():
            result = evaluate_fitted(category, model, seconds[label])
            print(f"| {name} | {label} | {result.image_auroc:.1f} | {result.pixel_auroc:.1f} | {result.pro:.1f} | "
                  f"{result.peak_on_defect:.0f} | {seconds[label]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
