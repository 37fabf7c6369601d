"""Whole-image predict against its floor: the feature network run once over the whole image, in one run on the
same images, at 224 px, 1 MP and 5 MP.

    python benchmarks/whole_image_speed.py [--sizes 224x224,1232x924,2592x1944] [--runtimes torch,onnxruntime]

For each size a model is fitted on good mosaics of the scikit-image brick photo at that size (the 5 MP model on
1 MP images, inspected at the frame's native size: a bank of the same kind, fitted in reasonable time). Then,
best of `--repeats`, one image at a time as a line predicts:
- floor: the model's own feature network (backbone to the deepest tap, patch features) once over the whole image,
  in the same runtime (`runtime`: eager torch, or ONNX Runtime);
- end to end: `predict_files` as `patchcore predict` runs it (decode, predict, heatmap overlay written);
- its split, timed inside that same call: decode, resize to the working size, network (all tiles), search,
  Eq. 7, maps (upsampling, blur, original size), outputs (overlay PNG), and the rest;
- network pixels / image pixels (the tiles' overlap) and the ratio end to end / floor.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import patchcore.apps.jobs as jobs
from patchcore import PatchCore
from patchcore.core.batches import BatchLoop
from patchcore.data.offline import texture_photo
from patchcore.evaluation.evaluate import machine_description
from timing import best_of  # benchmarks/timing.py, beside this script
from whole_image import mosaic  # benchmarks/whole_image.py, beside this script

PARTS = ("decode", "resize", "network", "search", "Eq. 7", "maps", "outputs")


class Timers:
    """Exclusive wall time per part: time spent in a part nested in another is counted once, in the inner one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []

    def wrap(self, part: str, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            self._stack.append([part, 0.0])
            try:
                return function(*args, **kwargs)
            finally:
                _, inner = self._stack.pop()
                elapsed = time.perf_counter() - started
                self.seconds[part] += elapsed - inner
                if self._stack:
                    self._stack[-1][1] += elapsed
        return timed


@contextmanager
def instrumented(model: PatchCore, timers: Timers):
    """The model and the predict loop with each part's functions wrapped in `timers`, restored afterwards."""
    patched = [(jobs, "load_image", "decode"), (jobs, "write_overlay", "outputs"), (BatchLoop, "picture", "resize"),
               (model, "_network", "network"), (model.index_, "search_tensor", "search"),
               (model, "_image_scores", "Eq. 7"), (model, "_maps", "maps")]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patched]
    for owner, name, part in patched:
        setattr(owner, name, timers.wrap(part, getattr(owner, name)))
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def floor_seconds(model: PatchCore, image: Image.Image, repeats: int) -> float:
    """Best of `repeats` passes of the model's network over the whole image, after one untimed pass (an ONNX
    Runtime network exports, or loads, the whole image's shape on its first)."""
    batch = model.preprocessor_(image)[None].to(model.device_)
    with torch.inference_mode():
        model._network(batch)
        return best_of(repeats, lambda: model._network(batch))


def measure(model: PatchCore, path: Path, out: Path, repeats: int) -> dict:
    image = Image.open(path).convert("RGB")
    model.predict([path])  # warm: caches, allocator, lazily built operators
    floor = floor_seconds(model, image, repeats)
    best, split = float("inf"), {}
    for _ in range(repeats):
        timers = Timers()
        with instrumented(model, timers):
            started = time.perf_counter()
            jobs.predict_files(model, [path], [path.stem], out)
            elapsed = time.perf_counter() - started
        if elapsed < best:
            best, split = elapsed, dict(timers.seconds)
    network_size = model.preprocessor_.network_size(image.size)
    tiles = model.preprocessor_.tiles(network_size)
    tiled = sum(t.width * t.height for t in tiles)
    split["rest"] = best - sum(split.values())
    return {"floor": floor, "end": best, "split": split, "tiles": len(tiles),
            "overlap": tiled / (network_size[0] * network_size[1]), "bank": model.memory_bank_.shape[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="224x224,1232x924,2592x1944", help="Image sizes, WxH.")
    parser.add_argument("--train-images", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runtimes", default="torch,onnxruntime", help="Where the network runs, compared in turn.")
    args = parser.parse_args()
    photo = texture_photo("brick")
    rng = np.random.default_rng(0)
    print(f"Machine: {machine_description()}, torch {torch.__version__}, {torch.get_num_threads()} threads.\n")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        models: dict[tuple[int, int], PatchCore] = {}
        for size in args.sizes.split(","):
            width, height = map(int, size.split("x"))
            fit_size = (width, height) if width * height <= 1_500_000 else (1232, 924)
            if fit_size not in models:
                train = [Image.fromarray(mosaic(photo, *fit_size, rng)).convert("RGB") for _ in range(args.train_images)]
                models[fit_size] = PatchCore(progress=False).fit(train)
            model = models[fit_size]
            fitted_size = model.preprocessor_.image_size
            if fit_size != (width, height):  # inspect the larger frame at its native size
                model.set_params(image_size=max(width, height))
                model._build_pipeline(model.backbone_, model.image_size)
            path = folder / f"{size}.png"
            Image.fromarray(mosaic(photo, width, height, rng)).convert("RGB").save(path)
            for runtime in args.runtimes.split(","):
                model.set_params(runtime=runtime)
                model._build_pipeline(model.backbone_, model.preprocessor_.image_size)
                rows.append((size, runtime, measure(model, path, folder / "out", args.repeats)))
            model.set_params(image_size=None, runtime="torch")
            model._build_pipeline(model.backbone_, fitted_size)
    torch_floor = {size: r["floor"] for size, runtime, r in rows if runtime == "torch"}
    print("| image | runtime | tiles (network px / image px) | bank rows | floor s | end to end s | end / floor | "
          "end / torch floor | " + " | ".join(f"{p} s" for p in (*PARTS, "rest")) + " |")
    print("|" + "---|" * (9 + len(PARTS)))
    for size, runtime, r in rows:
        split = " | ".join(f"{r['split'].get(p, 0.0):.3f}" for p in (*PARTS, "rest"))
        versus_torch = f"{r['end'] / torch_floor[size]:.2f}" if size in torch_floor else "-"
        print(f"| {size} | {runtime} | {r['tiles']} ({r['overlap']:.2f}) | {r['bank']} | {r['floor']:.3f} | "
              f"{r['end']:.3f} | {r['end'] / r['floor']:.2f} | {versus_torch} | {split} |")
    print("\nShares of the network's time (targets at 1 MP: search + Eq. 7 under 30 %, maps under 10 %):")
    for size, runtime, r in rows:
        network = r["split"].get("network", float("nan"))
        print(f"  {size} {runtime}: search + Eq. 7 {100 * (r['split'].get('search', 0) + r['split'].get('Eq. 7', 0)) / network:.0f} %, "
              f"maps {100 * r['split'].get('maps', 0) / network:.0f} %, outputs {100 * r['split'].get('outputs', 0) / network:.0f} %")


if __name__ == "__main__":
    main()
