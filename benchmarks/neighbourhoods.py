"""Which neighbourhood (p of Eq. 1) per feature level finds both small and large defects?

    python benchmarks/neighbourhoods.py data/offline elpv_module_mono_small elpv_module_mono --settings 3,3 1,1 3,1 1+3,1+3

p = 1 finds 8-24 px defects on the 1200 x 900 modules far better than the default p = 3, and loses on
real defective cells (often as wide as the cell). A trial of settings in between. Each setting gives
one p per tapped level, comma-separated, in tap order ("3,1": p = 3 on the stride-8 tap, 1 on the
stride-16 one); "1+3" on a level concatenates that level's features pooled both ways (the patch
feature grows by the level's channels); "m3" takes the neighbourhood's maximum instead of its mean. Prints `patchcore evaluate`'s image AUROC, PRO and share of
defective images whose map maximum lies on the defect, per category and setting.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
import torch.nn.functional as F

from patchcore import PatchCore
from patchcore.core.features import FeatureExtractor
from patchcore.data.categories import load_category
from patchcore.evaluation.evaluate import evaluate_category


def pool(tap: torch.Tensor, size: int | str) -> torch.Tensor:
    """p x p averaging (Eq. 1) for an int; 'mP' takes the maximum over the neighbourhood instead."""
    if isinstance(size, str):
        p = int(size[1:])
        return F.max_pool2d(tap, p, stride=1, padding=p // 2)
    return F.avg_pool2d(tap, size, stride=1, padding=size // 2)


def pooled_levels(extractor: FeatureExtractor, taps: dict[str, torch.Tensor], setting: list[list[int]]) -> torch.Tensor:
    """`FeatureExtractor._patch_features` with the level's own neighbourhoods (raw channels, no pooling matrix)."""
    grids = [torch.cat([pool(taps[layer], p) for p in sizes], dim=1) for layer, sizes in zip(extractor.layers, setting)]
    target = max((grid.shape[-2:] for grid in grids), key=lambda size: size[0] * size[1])
    grids = [grid if grid.shape[-2:] == target else F.interpolate(grid, size=target, mode="bilinear", align_corners=False)
             for grid in grids]
    return torch.cat([grid.permute(0, 2, 3, 1) for grid in grids], dim=-1).contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("categories", nargs="+")
    parser.add_argument("--settings", nargs="+", default=["3,3", "1,1", "3,1", "1,3", "1+3,1+3"])
    args = parser.parse_args()
    original = FeatureExtractor._patch_features
    for name in args.categories:
        category = load_category(args.root, name)
        for text in args.settings:
            setting = [[p if p.startswith("m") else int(p) for p in level.split("+")] for level in text.split(",")]
            if setting == [[3], [3]]:
                FeatureExtractor._patch_features = original  # the shipped code, as the reference
            else:
                FeatureExtractor._patch_features = lambda self, taps, setting=setting: pooled_levels(self, taps, setting)
            # The feature dimension is probed on a zero image in __init__, so it follows the setting.
            FeatureExtractor.feature_dim = property(lambda self: self._patch_features(self._taps(torch.zeros(1, 3, 64, 64))).shape[-1],
                                                    lambda self, value: None)
            result = evaluate_category(category, partial(PatchCore))
            del FeatureExtractor.feature_dim
            print(f"{name:24s} p {text:10s} image AUROC {result.image_auroc:5.1f}  PRO {result.pro:5.1f}  "
                  f"map max on defect {result.peak_on_defect:5.1f} %  fit {result.fit_seconds:5.1f} s", flush=True)


if __name__ == "__main__":
    main()
