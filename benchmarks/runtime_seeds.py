"""Does the runtime change a score, or only the fitted bank? One category, fitted under torch and scored under both
runtimes, then fitted under each runtime with several seeds.

    PATCHCORE_CACHE=/tmp/cache python benchmarks/runtime_seeds.py data/offline hires_brick --seeds 0,1,2
"""

from __future__ import annotations

import argparse

import numpy as np

from patchcore import PatchCore
from patchcore.core.runtime import OnnxRuntimeNetwork
from patchcore.data.categories import load_category
from patchcore.evaluation.metrics import image_auroc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("category")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    category = load_category(args.root, args.category)
    train = list(category.train_images)
    images = [sample.image for sample in category.test_samples]
    labels = np.array([sample.is_anomalous for sample in category.test_samples])
    model = PatchCore().fit(train)
    eager = model.score_samples(images)
    model._network = OnnxRuntimeNetwork(model.extractor_)
    compiled = model.score_samples(images)
    print(f"one model fitted under torch: image AUROC {image_auroc(labels, eager):.1f} scored under torch, "
          f"{image_auroc(labels, compiled):.1f} under onnxruntime; largest score difference "
          f"{np.abs(eager - compiled).max():.1e}")
    for runtime in ("torch", "onnxruntime"):
        aurocs = [image_auroc(labels, PatchCore(seed=int(seed), runtime=runtime).fit(train).score_samples(images))
                  for seed in args.seeds.split(",")]
        print(f"fitted under {runtime}, seeds {args.seeds}: image AUROC {', '.join(f'{a:.1f}' for a in aurocs)}")


if __name__ == "__main__":
    main()
