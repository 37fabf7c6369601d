"""How well defect regions size pasted defects: fit on non-square gravel crops, paste brick squares of 8 to 64 px
on other crops, and compare each region's area with the defect's, cut at the pixel threshold alone and cut at
half the region's height over the good images' typical pixel (what `find_regions` ships); good crops' regions.

    python benchmarks/regions.py
"""

from __future__ import annotations

import numpy as np

from patchcore import PatchCore
from patchcore.core.defect_regions import find_regions
from patchcore.data.offline import texture_photo

HEIGHT, WIDTH = 160, 224


def main() -> None:
    gravel, brick = texture_photo("gravel"), texture_photo("brick")
    train = [gravel[y : y + HEIGHT, x : x + WIDTH] for y in range(0, 250, 50) for x in range(0, 288, 48)][:30]
    model = PatchCore(coreset_ratio=0.1).fit(train)
    rule = model.decision_rule()
    print(f"{len(train)} training crops {WIDTH} x {HEIGHT}; pixel threshold {rule.region_threshold:.2f}, "
          f"typical good pixel {rule.typical_pixel:.2f}")
    goods = [gravel[340 : 340 + HEIGHT, x : x + WIDTH] for x in (0, 96, 192, 288)]
    print("regions on 4 good crops:", [len(p.regions) for p in model.predict(goods)])
    print("| defect px | found | area / defect area, threshold cut | area / defect area, half height |")
    print("|---|---|---|---|")
    rng = np.random.default_rng(0)
    for size in (8, 16, 32, 64):
        by_threshold, by_half = [], []
        for k in range(3):
            crop = gravel[330 : 330 + HEIGHT, 40 + 80 * k : 40 + 80 * k + WIDTH].copy()
            top, left = int(rng.integers(0, HEIGHT - size)), int(rng.integers(0, WIDTH - size))
            crop[top : top + size, left : left + size] = brick[100 : 100 + size, 100 : 100 + size]
            amap = model.predict([crop])[0].anomaly_map
            centre = (left + size // 2, top + size // 2)
            for cut, areas in ((None, by_threshold), (rule.typical_pixel, by_half)):
                on_it = [r for r in find_regions(amap, rule.region_threshold, cut)
                         if r.bbox[0] <= centre[0] < r.bbox[2] and r.bbox[1] <= centre[1] < r.bbox[3]]
                if on_it:
                    areas.append(on_it[0].area / size**2)
        ratios = [", ".join(f"{a:.2f}" for a in areas) or "-" for areas in (by_threshold, by_half)]
        print(f"| {size} | {len(by_half)} of 3 | {ratios[0]} | {ratios[1]} |")


if __name__ == "__main__":
    main()
