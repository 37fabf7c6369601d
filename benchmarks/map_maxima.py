"""Where each test image's anomaly-map maximum lies: on its defect, or where instead.

    python benchmarks/map_maxima.py data/offline hires_grass
    python benchmarks/map_maxima.py data/offline hires_brick --layers level1,level2 --coreset-ratio 0.025
    python benchmarks/map_maxima.py data/offline hires_grass --reflect-pad 64

Fits on the category's train/good images and prints one line per test image: its score, where its
map peaks (also within the hires panels' 120 x 250 px regions, to spot mosaic seams) and, for a
defective image, the peak's distance to the defect and the map's highest value on the defect. Ends
with the map-maximum AUROC (each image scored by its map's maximum) and the share of defective
images whose peak lies within 4 px of the defect. `--reflect-pad N` pads every image by N px of
reflection before the model and crops the maps back: a trial of whether image edges cause false peaks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from patchcore import PatchCore
from patchcore.data.categories import load_category

REGION = (120, 250)  # the hires panels' regions (patchcore.data.offline.REGION)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("category")
    parser.add_argument("--layers", default=None, help="comma-separated taps (default: the backbone's)")
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--reflect-pad", type=int, default=0)
    args = parser.parse_args()
    category = load_category(args.root, args.category)
    pad = args.reflect_pad

    def load(path: Path) -> np.ndarray:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        return np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="reflect") if pad else pixels

    train = [load(path) for path in category.train_images]
    model = PatchCore(layers=tuple(args.layers.split(",")) if args.layers else None, coreset_ratio=args.coreset_ratio,
                      image_size=max(train[0].shape[:2]), progress=False).fit(train)
    labels, peaks, on_defect = [], [], []
    for sample in category.test_samples:
        path, mask_path = sample.image, sample.mask
        prediction = model.predict([load(path)])[0]
        amap = prediction.anomaly_map[pad : prediction.anomaly_map.shape[0] - pad,
                                      pad : prediction.anomaly_map.shape[1] - pad] if pad else prediction.anomaly_map
        y, x = np.unravel_index(np.nanargmax(amap), amap.shape)
        line = (f"{path.parent.name:13s} {path.stem} score {prediction.score:6.2f} peak at y={y:4d} x={x:5d} "
                f"(in its region: {y % REGION[0]:3d}, {x % REGION[1]:3d})")
        labels.append(sample.is_anomalous)
        peaks.append(float(np.nanmax(amap)))
        if mask_path is not None:
            mask = np.asarray(Image.open(mask_path)) > 0
            rows, columns = np.nonzero(mask)
            distance = float(np.sqrt(((rows - y) ** 2 + (columns - x) ** 2).min()))
            on_defect.append(distance <= 4)
            line += f"  defect at ({int(rows.mean())}, {int(columns.mean())}), {distance:.0f} px away, map max on it {np.nanmax(amap[mask]):.2f}"
        print(line, flush=True)
    print(f"{args.category}: map-maximum AUROC {100 * roc_auc_score(labels, peaks):.1f}, "
          f"peak on the defect {100 * np.mean(on_defect):.0f} % of {len(on_defect)} defective images")


if __name__ == "__main__":
    main()
