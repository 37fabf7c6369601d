"""Predict time per image of a saved model on whole images, with the code on PYTHONPATH: run it under two checkouts
to compare their tile layouts on the same model and images (best of 3 predictions; tiles and scores printed).

    PYTHONPATH=<checkout>/src python benchmarks/tile_speed.py MODEL_DIR [IMAGES_DIR] [--count 6]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from patchcore import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("images", type=Path, nargs="?", default=Path("data/offline/elpv_module_mono/test"))
    parser.add_argument("--count", type=int, default=6)
    args = parser.parse_args()
    model = load_model(args.model_dir)
    images = sorted(args.images.rglob("*.png"))[: args.count]
    network = model.preprocessor_.network_size(model.training_size_)
    tiles = model.preprocessor_.tiles(network)
    model.predict(images[:1])  # warm-up
    times = []
    for _ in range(3):
        started = time.perf_counter()
        predictions = model.predict(images)
        times.append(time.perf_counter() - started)
    print(json.dumps({"tiles": len(tiles), "tile": [tiles[0].width, tiles[0].height],
                      "pixels_ratio": round(sum(t.width * t.height for t in tiles) / (network[0] * network[1]), 3),
                      "s_per_image": round(min(times) / len(images), 3),
                      "scores": [round(p.score, 3) for p in predictions]}))


if __name__ == "__main__":
    main()
