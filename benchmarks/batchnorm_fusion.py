"""Folded batch norms against the plain backbone: time of the forward pass up to the deepest tap.

    python benchmarks/batchnorm_fusion.py --backbone efficientnet_lite0

Both run in this process on the same 32 random 224 px images, channels-last, best of 5, at batch
1 and 16; prints ms per image and the largest feature difference.
"""

from __future__ import annotations

import argparse
import copy

import torch

from patchcore.backbones import get_backbone_spec, load_backbone, resolve_layers
from patchcore.evaluation.evaluate import machine_description
from patchcore.core.features import FeatureExtractor
from timing import best_of  # benchmarks/timing.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    args = parser.parse_args()
    backbone = load_backbone(args.backbone)
    plain_backbone = copy.deepcopy(backbone)  # before FeatureExtractor folds the norms in place
    layers = resolve_layers(get_backbone_spec(args.backbone), None)
    fused = FeatureExtractor(backbone, layers, 3, None).to(memory_format=torch.channels_last)
    plain = copy.deepcopy(fused)
    plain.steps = torch.nn.ModuleList(step for _, step in plain_backbone.module.stages()[: len(fused.steps)])
    plain = plain.to(memory_format=torch.channels_last)
    images = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        difference = (plain(images[:4]) - fused(images[:4])).abs().max().item()
    print(f"Machine: {machine_description()}. {args.backbone}, taps {', '.join(layers)}; "
          f"largest feature difference {difference:.1e}")
    print("\n| batch | plain ms / image | folded ms / image | speed-up |\n|---|---|---|---|")
    for batch_size in (1, 16):
        def run(extractor) -> None:
            with torch.inference_mode():
                for start in range(0, len(images), batch_size):
                    extractor._taps(images[start : start + batch_size])

        slow, fast = best_of(5, lambda: run(plain)), best_of(5, lambda: run(fused))
        print(f"| {batch_size} | {1000 * slow / 32:.2f} | {1000 * fast / 32:.2f} | {slow / fast:.2f}x |")


if __name__ == "__main__":
    main()
