"""Whole-image inspection on this machine: fit time on 20 images of 1200 x 900, predict time per image and
per megapixel at several sizes, and the peak memory of one prediction of a 20-megapixel frame.

    python benchmarks/whole_image.py [--texture brick]

Images are mosaics of the scikit-image texture photo at native resolution (random crops, so no two are
alike). Each prediction size runs in a fresh process so its peak RSS is its own; that process loads the
model fitted on the 1200 x 900 images, with the working size set to the frame's native size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from patchcore import PatchCore
from patchcore.data.offline import texture_photo
from patchcore.evaluation.evaluate import machine_description

PREDICT = """
import json, re, sys, time
from pathlib import Path

def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork and exec)
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024
from patchcore import load_model
model = load_model(sys.argv[1])
model.set_params(image_size=int(sys.argv[3]))  # inspect the frame at its native size
model._build_pipeline(model.backbone_, model.image_size)
started = time.perf_counter()
prediction = model.predict([sys.argv[2]])[0]
print(json.dumps({"seconds": time.perf_counter() - started, "shape": list(prediction.anomaly_map.shape),
                  "peak_mb": peak_mb()}))
"""


def mosaic(photo: np.ndarray, width: int, height: int, rng: np.random.Generator, block: int = 256) -> np.ndarray:
    out = np.empty((height, width), dtype=np.uint8)
    for y in range(0, height, block):
        for x in range(0, width, block):
            h, w = min(block, height - y), min(block, width - x)
            sy, sx = rng.integers(photo.shape[0] - block + 1), rng.integers(photo.shape[1] - block + 1)
            out[y : y + h, x : x + w] = photo[sy : sy + h, sx : sx + w]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texture", default="brick")
    parser.add_argument("--sizes", default="1200x900,2000x1500,5000x4000", help="Prediction sizes, WxH.")
    args = parser.parse_args()
    photo = texture_photo(args.texture)
    rng = np.random.default_rng(0)
    print(f"Machine: {machine_description()}.")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        train = [Image.fromarray(mosaic(photo, 1200, 900, rng)) for _ in range(20)]
        model = PatchCore(progress=False)
        started = time.perf_counter()
        model.fit(train)
        fit_seconds = time.perf_counter() - started
        model.save(folder / "model")
        print(f"\nFit on 20 images of 1200 x 900 (working size {model.preprocessor_.image_size}): {fit_seconds:.1f} s "
              f"(features {model.extraction_seconds_:.1f} s, coreset {model.sampling_seconds_:.1f} s), bank "
              f"{model.memory_bank_.shape[0]} x {model.memory_bank_.shape[1]} from {model.n_patches_seen_} patches")
        print("\n| image | megapixels | tiles | predict s | s / megapixel | peak MB (process) |\n|---|---|---|---|---|---|")
        for size in args.sizes.split(","):
            width, height = map(int, size.split("x"))
            path = folder / f"{size}.bmp"
            Image.fromarray(mosaic(photo, width, height, rng)).convert("RGB").save(path)
            run = subprocess.run([sys.executable, "-c", PREDICT, str(folder / "model"), str(path), str(max(width, height))],
                                 capture_output=True, text=True, check=True)
            result = json.loads(run.stdout)
            megapixels = width * height / 1e6
            tiles = len(model.preprocessor_.tiles((width, height)))
            print(f"| {width} x {height} | {megapixels:.1f} | {tiles} | {result['seconds']:.2f} | "
                  f"{result['seconds'] / megapixels:.2f} | {result['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
