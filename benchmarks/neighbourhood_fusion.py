"""Two models, p = 1 and p = 3 (Eq. 1), fused by the mean or by the maximum of their normalised outputs.

    python benchmarks/neighbourhood_fusion.py data/offline elpv_module_mono_small elpv_module_mono
    python benchmarks/neighbourhood_fusion.py data/offline elpv_module_mono_small --first-preset small-defects

p = 1 finds small defects, p = 3 wide ones (benchmarks/neighbourhoods.py). A trial of whether taking,
image by image and pixel by pixel, the larger of the two models' outputs (each normalised by its own
cross-fit good images, as `patchcore.baselines.Ensemble` does) keeps the best of both, where their mean
(the Ensemble's rule) lands between them. Prints image AUROC and the share of defective images whose
map maximum lies on the defect (as `patchcore evaluate` counts it), per category and rule.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from patchcore import PRESETS, Ensemble, PatchCore
from patchcore.data.categories import load_category, load_mask
from patchcore.evaluation.evaluate import peak_on_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("categories", nargs="+")
    parser.add_argument("--first-preset", default=None, choices=list(PRESETS),
                        help="The first member from this preset instead of plain p = 1 (e.g. small-defects).")
    args = parser.parse_args()
    first = PatchCore(**PRESETS[args.first_preset]) if args.first_preset else PatchCore(patch_size=1)
    first_name = args.first_preset or "p = 1"
    for name in args.categories:
        category = load_category(args.root, name)
        train, test = list(category.train_images), category.test_samples
        ensemble = Ensemble([clone(first), PatchCore(patch_size=3)]).fit(train)
        labels = np.array([int(sample.is_anomalous) for sample in test])
        z_scores, maps = [], []
        for member, (mean, spread), scale in zip(ensemble.members, ensemble.score_scales_, ensemble.map_scales_):
            predictions = list(member.iter_predict([s.image for s in test]))
            z_scores.append([(p.score - mean) / spread for p in predictions])
            maps.append([p.anomaly_map / scale for p in predictions])
        z_scores = np.array(z_scores)
        masks = [load_mask(s.mask, (maps[0][i].shape[1], maps[0][i].shape[0])) if s.mask else None for i, s in enumerate(test)]
        rules = {first_name: lambda stack: stack[0], "p = 3": lambda stack: stack[1],
                 "mean": lambda stack: np.mean(stack, axis=0), "max": lambda stack: np.max(stack, axis=0)}
        for rule, fuse in rules.items():
            hits = [peak_on_mask(fuse(np.stack([maps[0][i], maps[1][i]])), mask)
                    for i, mask in enumerate(masks) if mask is not None and mask.any()]
            auroc = roc_auc_score(labels, fuse(z_scores))
            print(f"{name:24s} {rule:6s} image AUROC {100 * auroc:5.1f}  map max on defect {100 * np.mean(hits):5.1f} %", flush=True)


if __name__ == "__main__":
    main()
