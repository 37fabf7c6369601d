"""What each registered backbone costs on this machine: fit and predict time per image at 224 px and at about one
megapixel, bank size and peak memory, each backbone in its own process (so its peak RSS is its own).

    python benchmarks/backbone_cost.py [--backbones efficientnet_lite0,dinov2_vits14] [--images 4]

Weights are random where none ship in a registry (WideResNet, ResNet, DINOv2): time and memory do not depend on
the weights' values. Images are crops of scikit-image's brick photo tiled into a mosaic at 1 MP (1232 x 821 px
of brick texture, the photo repeated with random offsets). The same fit settings for every backbone: 10 %
coreset, no tiles below 1024 px, the default taps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from patchcore.backbones import BACKBONES
from patchcore.evaluation.evaluate import machine_description

ONE_BACKBONE = """
import json, re, sys, time
from pathlib import Path

def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork and exec)
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024
import numpy as np
from patchcore import PatchCore
from patchcore.data.offline import texture_photo

name, count, side = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
photo = texture_photo("brick")
rng = np.random.default_rng(0)

def image(width, height):
    tiles = np.tile(photo, (height // photo.shape[0] + 2, width // photo.shape[1] + 2) + (1,) * (photo.ndim - 2))
    y, x = rng.integers(0, photo.shape[0]), rng.integers(0, photo.shape[1])
    return np.ascontiguousarray(tiles[y : y + height, x : x + width])

width, height = side, (side if side <= 1000 else side * 2 // 3)
train = [image(width, height) for _ in range(count)]
test = [image(width, height) for _ in range(count)]
weights = None if name.startswith("efficientnet") else "random"
model = PatchCore(backbone=name, weights=weights, image_size=side, coreset_ratio=0.1)
started = time.perf_counter()
model.fit(train)
fit = time.perf_counter() - started
model.predict(test[:1])  # warm-up
started = time.perf_counter()
model.predict(test)
predict = time.perf_counter() - started
megapixels = width * height / 1e6
print(json.dumps({"backbone": name, "size": f"{width} x {height}", "fit_s_per_image": fit / count,
                  "predict_s_per_image": predict / count, "predict_s_per_mp": predict / count / megapixels,
                  "bank_rows": int(model.memory_bank_.shape[0]), "feature_dim": int(model.memory_bank_.shape[1]),
                  "peak_mb": peak_mb()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--images", type=int, default=4, help="Training and test images per size.")
    parser.add_argument("--sizes", default="224,1232", help="Longer sides: 224 (square) and about 1 MP (3:2).")
    args = parser.parse_args()
    print(f"machine: {machine_description()}")
    print("| backbone | image | fit s / image | predict s / image | predict s / MP | bank rows x dim | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for name in args.backbones.split(","):
        for side in (int(value) for value in args.sizes.split(",")):
            done = subprocess.run([sys.executable, "-c", ONE_BACKBONE, name, str(args.images), str(side)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(f"| {name} | {side} | failed: {done.stderr.strip().splitlines()[-1]} |||||")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {name} | {row['size']} | {row['fit_s_per_image']:.2f} | {row['predict_s_per_image']:.3f} | "
                  f"{row['predict_s_per_mp']:.2f} | {row['bank_rows']} x {row['feature_dim']} | "
                  f"{row['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
