"""An exported model against the library on whole images: scores, maps and time.

    patchcore fit data/offline/hires_brick --out /tmp/m_hb --index exact && patchcore export /tmp/m_hb
    python benchmarks/onnx_tiled.py /tmp/m_hb IMAGE [IMAGE ...]

Runs `predict_with_onnx` (the file's metadata alone: either graph, tiles stitched) and the loaded
model's `predict` on the same images, on the CPU, and prints each image's two scores, the largest map
difference, and the time of each side (first call included).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime

from patchcore import load_model
from patchcore.apps.export import predict_with_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args()
    path = args.model_dir / "model.onnx"
    metadata = onnxruntime.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    tiles = len(json.loads(metadata["tiling"])["tiles"]) if metadata["graph"] == "tile" else 1
    print(f"graph: {metadata['graph']}, {tiles} tile(s) per image of the training size")
    model = load_model(args.model_dir, device="cpu")
    started = time.perf_counter()
    predictions = model.predict(args.images)
    library_seconds = time.perf_counter() - started
    started = time.perf_counter()
    exported = predict_with_onnx(path, args.images)
    onnx_seconds = time.perf_counter() - started
    for image, prediction, (score, amap) in zip(args.images, predictions, exported):
        gap = float(np.nanmax(np.abs(amap - prediction.anomaly_map)))
        print(f"{image}: library {prediction.score:.4f}, onnx {score:.4f}, largest map difference {gap:.1e}")
    print(f"library {library_seconds:.1f} s, onnxruntime {onnx_seconds:.1f} s for {len(args.images)} images")


if __name__ == "__main__":
    main()
