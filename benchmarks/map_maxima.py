"""Where each test image's anomaly-map maximum lies: on its defect, or where instead.

    python benchmarks/map_maxima.py data/offline hires_grass
    python benchmarks/map_maxima.py data/offline hires_brick --layers level1,level2 --coreset-ratio 0.025
    python benchmarks/map_maxima.py data/offline hires_grass --reflect-pad 64
    python benchmarks/map_maxima.py data/offline elpv_module_mono

Fits on the category's train/good images and prints one line per test image: its score, where its
map peaks (also within the hires panels' 120 x 250 px regions, to spot mosaic seams, or the modules'
300 px cells) and, for a defective image, the peak's distance to the defect and the map's highest
value on the defect. Ends with the map-maximum AUROC (each image scored by its map's maximum) and the
share of defective images whose peak lies within 4 px of the defect. For the hires panels (their
`regions.json`) it also traces each peak to the spot of the source photo it shows, and counts how
many peaks share a spot. `--reflect-pad N` pads every image by N px of reflection before the model
and crops the maps back: a trial of whether image edges cause false peaks.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from patchcore import PatchCore
from patchcore.data.categories import load_category
from patchcore.data.offline import CELL, REGION


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options of the map-maximum trials: which category, and the model's taps and coreset ratio."""
    parser.add_argument("root", type=Path)
    parser.add_argument("category")
    parser.add_argument("--layers", default=None, help="comma-separated taps (default: the backbone's)")
    parser.add_argument("--coreset-ratio", type=float, default=0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--reflect-pad", type=int, default=0)
    args = parser.parse_args()
    category = load_category(args.root, args.category)
    pad = args.reflect_pad
    # The repeating unit of the benchmark's images: a mosaic region of the hires panels, a module's cell.
    unit = REGION if args.category.startswith("hires_") else (CELL, CELL)

    def load(path: Path) -> np.ndarray:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        return np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="reflect") if pad else pixels

    train = [load(path) for path in category.train_images]
    model = PatchCore(layers=tuple(args.layers.split(",")) if args.layers else None, coreset_ratio=args.coreset_ratio,
                      image_size=max(train[0].shape[:2]), progress=False).fit(train)
    regions_file = category.root / "regions.json"
    regions = json.loads(regions_file.read_text()) if regions_file.is_file() else None
    labels, peaks, on_defect, photo_spots = [], [], [], []
    for sample in category.test_samples:
        path, mask_path = sample.image, sample.mask
        prediction = model.predict([load(path)])[0]
        amap = prediction.anomaly_map[pad : prediction.anomaly_map.shape[0] - pad,
                                      pad : prediction.anomaly_map.shape[1] - pad] if pad else prediction.anomaly_map
        y, x = np.unravel_index(np.nanargmax(amap), amap.shape)
        line = (f"{path.parent.name:13s} {path.stem} score {prediction.score:6.2f} peak at y={y:4d} x={x:5d} "
                f"(in its region: {y % unit[0]:3d}, {x % unit[1]:3d})")
        if regions is not None:
            relative = path.relative_to(category.root).as_posix()
            column_count = regions["grid"][1]
            origin_y, origin_x = regions["origins"][relative][(y // unit[0]) * column_count + x // unit[1]]
            spot = (origin_y + y % unit[0], origin_x + x % unit[1])
            photo_spots.append((int(spot[0]) // 64, int(spot[1]) // 64))
            line += f" = photo ({spot[0]:3d}, {spot[1]:3d})"
        labels.append(sample.is_anomalous)
        peaks.append(float(np.nanmax(amap)))
        if mask_path is not None:
            mask = np.asarray(Image.open(mask_path)) > 0
            rows, columns = np.nonzero(mask)
            distance = float(np.sqrt(((rows - y) ** 2 + (columns - x) ** 2).min()))
            on_defect.append(distance <= 4)
            line += f"  defect at ({int(rows.mean())}, {int(columns.mean())}), {distance:.0f} px away, map max on it {np.nanmax(amap[mask]):.2f}"
        print(line, flush=True)
    if photo_spots:
        common = Counter(photo_spots).most_common(3)
        listed = ", ".join(f"{count} at photo ({row * 64}-{row * 64 + 63}, {column * 64}-{column * 64 + 63})"
                           for (row, column), count in common)
        print(f"peaks on the same 64 px spot of the photo: {listed} "
              f"({sum(count for _, count in common)} of {len(photo_spots)} images)")
        for (row, column), _ in common:
            centre = (row * 64 + 32, column * 64 + 32)
            copies = {relative: sum(y <= centre[0] < y + unit[0] and x <= centre[1] < x + unit[1] for y, x in origins)
                      for relative, origins in regions["origins"].items()}
            test = [n for relative, n in copies.items() if relative.startswith("test/")]
            train = sum(n for relative, n in copies.items() if relative.startswith("train/"))
            print(f"  spot centred at photo {centre}: per test panel {min(test)}-{max(test)} times "
                  f"(median {np.median(test):.0f}), in all training panels together {train} times")
    print(f"{args.category}: map-maximum AUROC {100 * roc_auc_score(labels, peaks):.1f}, "
          f"peak on the defect {100 * np.mean(on_defect):.0f} % of {len(on_defect)} defective images")


if __name__ == "__main__":
    main()
