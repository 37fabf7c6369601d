"""Our PatchCore against anomalib's, side by side: same images, same backbone module, same machine.

    python benchmarks/versus_anomalib.py data/offline/brick --coreset-ratio 0.1

Runs in the benchmark environment of benchmarks/README.md (anomalib installed beside this project;
anomalib is never a dependency of the project). Each implementation runs in its own child process
so that its peak resident memory is its own. Both get the same preprocessed 224 x 224 tensors and
the same backbone module (our registry's, handed to anomalib as an `nn.Module` backbone with the
same taps), so only the pipelines differ: patch features, coreset selection, nearest-neighbour
search, Eq. 7 and anomaly maps. Prints fit time (features / coreset), predict time per image at
batch 1 and 16 (score + 224 x 224 map), peak RSS, image AUROC, and the ratios anomalib / ours;
plus our backbone forward alone (up to the deepest tap), the floor no pipeline can beat, timed in
our process in turn with our predict so that both see the same machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from patchcore.backbones import get_backbone_spec, load_backbone, resolve_layers
from patchcore.backbones.efficientnet_lite import SameConv2d
from patchcore.core.batches import images_per_pass
from patchcore.data.categories import load_category
from patchcore.evaluation.evaluate import machine_description
from patchcore.core.preprocessing import Preprocessor
from patchcore.io.images import load_image
from patchcore.evaluation.metrics import image_auroc
from patchcore.core.patchcore import PatchCore
from timing import best_of_interleaved  # benchmarks/timing.py, beside this script

BATCH_SIZES = (1, 16)
TIMED_IMAGES = 32
INPUT_SIZE = 224  # every side of the comparison (ours, anomalib, the floor) sees 224 x 224 inputs


def preprocessor(backbone: str) -> Preprocessor:
    """The paper's resize 256, centre-crop 224, with the backbone's normalisation (as `PatchCore` does)."""
    spec = get_backbone_spec(backbone)
    return Preprocessor((256, 256), spec.mean, spec.std, center_crop=INPUT_SIZE)


def paper_crops(paths: list[Path]) -> list:
    """The same 224 x 224 crops as pictures: our model inspects them whole at their native size."""
    margin = (256 - INPUT_SIZE) // 2
    return [load_image(path).resize((256, 256)).crop((margin, margin, 256 - margin, 256 - margin)) for path in paths]


def tensors(paths: list[Path], preprocess: Preprocessor) -> torch.Tensor:
    return torch.stack([preprocess(load_image(path)) for path in paths])


def batches_of(images: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [images[i : i + size] for i in range(0, len(images), size)]


def run_ours(train: list[Path], test: torch.Tensor, args: argparse.Namespace) -> dict:
    feature_dim = "raw" if args.feature_dim == "raw" else (int(args.feature_dim) if args.feature_dim else None)
    # image_size: the crops are inspected at 224 px, as anomalib and the floor see them (the working-size rule
    # would enlarge them to 256 px).
    model = PatchCore(backbone=args.backbone, coreset_ratio=args.coreset_ratio, holdout_fraction=0.0,
                      batch_size=16, feature_dim=feature_dim, seed=args.seed, image_size=INPUT_SIZE)
    train_pictures, test_pictures = paper_crops(train), paper_crops(args.test_paths)
    started = time.perf_counter()
    model.fit(train_pictures)
    loop = model._loop()
    fit_seconds = time.perf_counter() - started

    def predict(batches: list[torch.Tensor]) -> list[float]:
        """Our scoring of the pictures the batches were made from (normalising them is part of ours)."""
        scores, start = [], 0
        for batch in batches:
            batch_scores, grids, _ = zip(*model._score_pictures([loop.picture(p) for p in test_pictures[start : start + len(batch)]], loop))
            model._maps(list(grids), [(INPUT_SIZE, INPUT_SIZE)] * len(grids))
            scores += batch_scores
            start += len(batch)
        return scores

    def backbone_alone(batches: list[torch.Tensor]) -> None:
        """The floor: the same folded extractor up to the deepest tap, no patch features, no search, in the
        passes our predict makes of each batch (on a CPU at most two 256 px images: faster per image)."""
        with torch.inference_mode():
            for batch in batches:
                for part in batch.split(images_per_pass(len(batch), *batch.shape[-2:], batch.device)):
                    model.extractor_._taps(part.contiguous(memory_format=torch.channels_last))

    return {
        "fit_s": fit_seconds,
        "features_s": model.extraction_seconds_,
        "coreset_s": model.sampling_seconds_,
        "bank": list(model.memory_bank_.shape),
        **timed_predictions(predict, test, args.repeats, backbone=backbone_alone),
    }


def run_anomalib(train: list[Path], test: torch.Tensor, args: argparse.Namespace) -> dict:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    spec = get_backbone_spec(args.backbone)
    # anomalib's default is WRN50 from a model hub; ours is handed over so only the pipelines differ.
    # torchvision's FX tracer needs every step as a named submodule: the same steps (same weights)
    # as a Sequential, with the taps renamed blocks.2 -> blocks_2.
    steps = load_backbone(args.backbone).module.stages()
    backbone = torch.nn.Sequential(OrderedDict((name.replace(".", "_"), step) for name, step in steps))
    traceable = fixed_padding(backbone, test.shape[-1])
    with torch.inference_mode():
        assert torch.equal(traceable(test[:2]), backbone(test[:2])), "fixed padding changed the backbone"
    backbone = traceable
    layers = [layer.replace(".", "_") for layer in resolve_layers(spec, None)]
    model = PatchcoreModel(layers=layers, backbone=backbone, pre_trained=False, num_neighbors=9)
    model.train()
    started = time.perf_counter()
    # Decoding and preprocessing count in both implementations' feature time.
    with torch.inference_mode():
        for batch in batches_of(tensors(train, preprocessor(args.backbone)), 16):
            model(batch)
    features_seconds = time.perf_counter() - started
    started = time.perf_counter()
    model.subsample_embedding(args.coreset_ratio)
    coreset_seconds = time.perf_counter() - started
    model.eval()

    def predict(batches: list[torch.Tensor]) -> list[float]:
        scores = []
        with torch.inference_mode():
            for batch in batches:
                scores.extend(model(batch).pred_score.flatten().tolist())
        return scores

    return {
        "fit_s": features_seconds + coreset_seconds,
        "features_s": features_seconds,
        "coreset_s": coreset_seconds,
        "bank": list(model.memory_bank.shape),
        **timed_predictions(predict, test, args.repeats),
    }


class FixedPadConv2d(torch.nn.Module):
    """A stride-2 'same' convolution with the padding its input size implies, fixed: FX can trace it."""

    def __init__(self, conv: SameConv2d, height: int) -> None:
        super().__init__()
        stride, kernel = conv.stride[0], conv.kernel_size[0]
        pad = max((math.ceil(height / stride) - 1) * stride + kernel - height, 0)
        self.pad = torch.nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(self.pad(x), self.conv.weight, self.conv.bias, self.conv.stride, 0, 1,
                                          self.conv.groups)


def fixed_padding(backbone: torch.nn.Module, size: int) -> torch.nn.Module:
    """A copy of `backbone` whose input-size-dependent padding is fixed for `size` x `size` inputs."""
    backbone = copy.deepcopy(backbone)
    heights: dict[str, int] = {}
    hooks = [module.register_forward_pre_hook(lambda m, inputs, name=name: heights.__setitem__(name, inputs[0].shape[-2]))
             for name, module in backbone.named_modules() if isinstance(module, SameConv2d) and module.stride[0] > 1]
    with torch.inference_mode():
        backbone(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    for name, height in heights.items():
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        setattr(parent, child, FixedPadConv2d(getattr(parent, child), height))
    return backbone


def timed_predictions(predict, test: torch.Tensor, repeats: int, backbone=None) -> dict:
    """ms per image of `predict` at each batch size, and of `backbone` (the floor) timed in turn with it."""
    result = {}
    for batch_size in BATCH_SIZES:
        batches = batches_of(test[:TIMED_IMAGES], batch_size)
        n_images = sum(len(b) for b in batches)
        functions = {"predict": lambda: predict(batches)}
        if backbone is not None:
            functions["backbone"] = lambda: backbone(batches)
        for name, seconds in best_of_interleaved(repeats, functions).items():
            result[f"{name}_ms_batch{batch_size}"] = 1000 * seconds / n_images
    result["scores"] = predict(batches_of(test, 16))
    return result


RUNNERS = {"ours": run_ours, "anomalib": run_anomalib}


def child(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    category = load_category(args.category.parent, args.category.name)
    train = list(category.train_images)
    args.test_paths = [s.image for s in category.test_samples]
    test = tensors(args.test_paths, preprocessor(args.backbone))
    labels = np.array([int(s.is_anomalous) for s in category.test_samples])
    result = RUNNERS[args.child](train, test, args)
    scores = result.pop("scores")
    if scores:
        result["image_auroc"] = image_auroc(labels, np.array(scores))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["n_train"], result["n_test"] = len(train), len(test)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("category", type=Path, help="A category folder in MVTec layout.")
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--feature-dim", default=None, help="Ours: an integer, or 'raw' for anomalib's merge.")
    parser.add_argument("--only", default=None, help="Comma list of ours, anomalib (default: both).")
    parser.add_argument("--child", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    results = {}
    for name in args.only.split(",") if args.only else ("ours", "anomalib"):
        command = [sys.executable, __file__, str(args.category), "--child", name, "--coreset-ratio",
                   str(args.coreset_ratio), "--backbone", args.backbone, "--repeats", str(args.repeats),
                   "--seed", str(args.seed), *(["--feature-dim", args.feature_dim] if args.feature_dim else [])]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
        print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)

    if set(results) != {"ours", "anomalib"}:
        return  # a partial run: the JSON lines above are its result
    ours, theirs = results["ours"], results["anomalib"]
    print(f"Machine: {machine_description()}. Category {args.category.name} ({ours['n_train']} train, "
          f"{ours['n_test']} test images), backbone {args.backbone}, coreset {args.coreset_ratio:.0%}, "
          f"torch {torch.__version__}; inputs {INPUT_SIZE} x {INPUT_SIZE} px for ours, anomalib and the floor.")
    print("\n| measure | ours | anomalib | anomalib / ours |\n|---|---|---|---|")
    rows = [("fit, feature extraction (s)", "features_s"), ("fit, coreset selection (s)", "coreset_s"),
            ("fit, total (s)", "fit_s"), ("predict, batch 1 (ms / image)", "predict_ms_batch1"),
            ("predict, batch 16 (ms / image)", "predict_ms_batch16"), ("peak RSS (MB)", "peak_rss_mb")]
    for label, key in rows:
        print(f"| {label} | {ours[key]:.2f} | {theirs[key]:.2f} | {theirs[key] / ours[key]:.2f} |")
    print(f"| image AUROC (%) | {ours['image_auroc']:.2f} | {theirs['image_auroc']:.2f} | |")
    print(f"| memory bank | {ours['bank'][0]} x {ours['bank'][1]} | {theirs['bank'][0]} x {theirs['bank'][1]} | |")
    print("\n| predict | backbone alone (ms / image) | ours / backbone | anomalib / backbone |\n|---|---|---|---|")
    for batch_size in BATCH_SIZES:
        key, floor = f"predict_ms_batch{batch_size}", ours[f"backbone_ms_batch{batch_size}"]
        print(f"| batch {batch_size} | {floor:.2f} | {ours[key] / floor:.2f} | {theirs[key] / floor:.2f} |")


if __name__ == "__main__":
    main()
