"""The exported ONNX graph under onnxruntime against the library's own predict, same images and bank.

    python benchmarks/onnx_speed.py MODEL_DIR CATEGORY_DIR

Exports MODEL_DIR (a saved PatchCore) to a temporary file, then times scoring 32 preprocessed test
images of CATEGORY_DIR at batch 1 and 16: the library (predict from decoded pictures, with the model's own
index) and onnxruntime (exact search inside the graph). Prints ms per image and the largest score
difference against the library searching exactly.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from patchcore.data.categories import load_category
from patchcore.evaluation.evaluate import machine_description
from patchcore.apps.export import export_onnx
from patchcore.io.images import load_image
from patchcore.core.patchcore import PatchCore
from timing import best_of  # benchmarks/timing.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("category", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = PatchCore.load(args.model_dir, device="cpu")
    category = load_category(args.category.parent, args.category.name)
    pictures = [load_image(s.image) for s in category.test_samples[:32]]
    images = torch.stack([model.preprocessor_(picture) for picture in pictures])
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, Path(folder) / "model.onnx")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        print(f"Machine: {machine_description()}; onnxruntime {onnxruntime.__version__}; bank "
              f"{model.memory_bank_.shape[0]} x {model.memory_bank_.shape[1]}; library index {model.index}")
        print("\n| batch | library ms / image | onnxruntime ms / image |\n|---|---|---|")
        for batch_size in (1, 16):
            batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
            model.batch_size = batch_size

            def library() -> None:  # from decoded pictures, as the graph from preprocessed ones
                for start in range(0, len(pictures), batch_size):
                    model.predict(pictures[start : start + batch_size])

            def runtime() -> None:
                for batch in batches:
                    session.run(None, {"images": batch.numpy()})

            ours, theirs = best_of(args.repeats, library), best_of(args.repeats, runtime)
            print(f"| {batch_size} | {1000 * ours / len(images):.2f} | {1000 * theirs / len(images):.2f} |")
        model.index = "exact"
        model.reindex()
        exact_scores = model.score_samples(pictures)
        onnx_scores, _ = session.run(None, {"images": images.numpy()})
        print(f"\nLargest score difference, onnxruntime vs. library with exact search: "
              f"{np.abs(onnx_scores - exact_scores).max():.2e}")


if __name__ == "__main__":
    main()
