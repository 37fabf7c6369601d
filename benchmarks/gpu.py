"""PatchCore on a GPU against the same machine's CPU cores, in one run, on the same images.

    python benchmarks/gpu.py data/offline --categories brick,grass,gravel --out gpu.json

For each device (cuda, then cpu): fit time with 1 %, 10 % and 100 % memory banks; time per image at
batch 1, 16 and 64 (predict end to end from decoded images: features, search, Eq. 7, maps at the
image's size); throughput from PNG files on disk at batch 64 (decoding included, with and without
loader threads); the greedy coreset of N x D random features to 10 %. On CUDA also: image AUROC in
float32 and bfloat16 autocast (and the features' relative difference), and the torch index's float16
first pass. Every model uses the library's defaults for its device (index 'auto': torch on CUDA, ivf on
CPU) except where a row names another. Prints markdown tables; --out also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import traceback
from pathlib import Path

import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from patchcore import PatchCore
from patchcore.core.sampling import greedy_coreset
from patchcore.data.categories import load_category
from patchcore.io.images import load_image

RATIOS = (0.01, 0.1, 1.0)
BATCHES = (1, 16, 64)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, function) -> float:
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started


def make_model(device: str, ratio: float, image_size: int, **settings) -> PatchCore:
    # A 10 % hold-out sets the threshold: the cross-fit (every training image scored against 5 banks)
    # would time the threshold, not the fit.
    return PatchCore(device=device, image_size=image_size, coreset_ratio=ratio, holdout_fraction=0.1,
                     sampler="greedy_coreset" if ratio < 1 else "none", **settings)


def per_image_ms(device: str, model: PatchCore, pictures: list[Image.Image], batch: int) -> float:
    model.batch_size = batch
    # Warm-up: kernels chosen, caches filled, and on CUDA the batch's shape captured as a graph (on its third call).
    if batch == 1:
        for picture in pictures[:4]:
            model.predict([picture])
        return 1000 * timed(device, lambda: [model.predict([p]) for p in pictures]) / len(pictures)
    for _ in range(3):
        model.predict(pictures[:batch])
    return 1000 * timed(device, lambda: model.predict(pictures)) / len(pictures)


def files_per_second(device: str, model: PatchCore, files: list[Path], loader_threads: int | None) -> float:
    model.batch_size, model.loader_threads = 64, loader_threads
    for _ in range(3):
        model.predict(files[:64])
    seconds = timed(device, lambda: model.predict(files))
    model.loader_threads = None
    return len(files) / seconds


def time_coreset(device: str, shape: tuple[int, int]) -> float:
    features = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    greedy_coreset(features[:20_000], 600, seed=0, device=device)  # warm-up
    return round(timed(device, lambda: greedy_coreset(features, shape[0] // 10, seed=0, device=device)), 3)


def with_index(model: PatchCore, index) -> PatchCore:
    model.index = index
    model.reindex()
    return model


def image_auroc(model: PatchCore, category) -> float:
    scores = model.score_samples([s.image for s in category.test_samples])
    return 100 * roc_auc_score([s.is_anomalous for s in category.test_samples], scores)


def bench_device(device: str, category, pictures, files, image_size: int, coreset_shape) -> dict:
    rows, notes = [], {}
    models = {}
    for ratio in RATIOS:
        model = make_model(device, ratio, image_size)
        fit_seconds = timed(device, lambda: model.fit(list(category.train_images)))
        models[ratio] = model
        row = {"device": device, "bank": f"{ratio:.0%}", "bank rows": model.memory_bank_.shape[0],
               "index": model.index_.kind, "fit s": round(fit_seconds, 2),
               "coreset s": round(model.sampling_seconds_, 2)}
        n = len(pictures) if device.startswith("cuda") or ratio < 1 else min(len(pictures), 64)
        for batch in BATCHES:
            row[f"ms/image b{batch}"] = round(per_image_ms(device, model, pictures[:n], batch), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    model, full = models[0.1], models[1.0]
    notes["files/s b64, loader threads (default)"] = guarded(
        "files", lambda: round(files_per_second(device, model, files, None), 1))
    notes["files/s b64, no loader threads"] = guarded("files", lambda: round(files_per_second(device, model, files, 0), 1))
    notes["image AUROC (10 %)"] = guarded("auroc", lambda: round(image_auroc(model, category), 2))
    notes[f"coreset {coreset_shape[0]}x{coreset_shape[1]} to 10 % s"] = guarded(
        "coreset", time_coreset, device, coreset_shape)
    for kind in (("exact", "torch") if device == "cpu" else ("exact",)):
        notes[f"100 % bank, index {kind}, ms/image b16"] = guarded(
            kind, lambda: round(per_image_ms(device, with_index(full, kind), pictures[:64], 16), 3))
    print(json.dumps(notes), flush=True)
    return {"rows": rows, "notes": notes, "models": models}


def precision_check(device: str, category, image_size: int, pictures) -> dict:
    """Image AUROC in float32 and bfloat16 autocast, the features' relative difference, bfloat16's speed."""
    result = {}
    for precision in ("float32", "bfloat16"):
        model = make_model(device, 0.1, image_size, precision=precision).fit(list(category.train_images))
        result[precision] = round(image_auroc(model, category), 2)
    batch = torch.stack([model.preprocessor_(load_image(p)) for p in pictures[:16]]).to(device)
    reduced = model.extractor_(batch)
    model.extractor_.autocast_dtype = None
    exact = model.extractor_(batch)
    model.extractor_.autocast_dtype = torch.bfloat16
    result["bf16 feature relative difference"] = float((reduced - exact).norm() / exact.norm())
    result["bf16 ms/image b64"] = round(per_image_ms(device, model, pictures, 64), 3)
    return result


def cuda_extras(categories, image_size: int, pictures, full: PatchCore, device: str = "cuda") -> dict:
    extras = {}
    for category in categories:
        extras[f"{category.name} image AUROC"] = guarded(category.name, precision_check, device, category, image_size,
                                                         pictures)
    from patchcore.search import make_index

    for name, index in (("torch float32", "torch"), ("torch float16 first pass", make_index("torch", first_pass="float16")),
                        ("torch_ivf", "torch_ivf")):
        extras[f"100 % bank, {name}, ms/image b16"] = guarded(
            name, lambda: round(per_image_ms(device, with_index(full, index), pictures, 16), 3))
    return extras


def guarded(section: str, function, *args):
    """Run one section; a failure is printed and recorded, and the other sections still run."""
    try:
        return function(*args)
    except Exception:  # noqa: BLE001 - a benchmark reports what broke and goes on
        traceback.print_exc()
        return {"failed": section}


def markdown(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="A folder of categories in MVTec layout (datasets build-offline).")
    parser.add_argument("--categories", default="brick,grass,gravel", help="The first is timed; all give AUROCs.")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=256, help="Decoded test images timed per batch size.")
    parser.add_argument("--files", type=int, default=1024, help="PNG files for the throughput from disk.")
    parser.add_argument("--coreset", default="200000x1024", help="ROWSxDIM of the coreset timing.")
    parser.add_argument("--devices", default="cuda,cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    categories = [load_category(args.root, name) for name in args.categories.split(",")]
    first = categories[0]
    tests = [load_image(s.image) for s in first.test_samples]
    pictures = [tests[i % len(tests)] for i in range(args.images)]
    coreset_shape = tuple(int(v) for v in args.coreset.split("x"))
    folder = Path(tempfile.mkdtemp(prefix="patchcore-gpu-bench-"))
    files = []
    for i in range(args.files):  # 256 x 256 PNGs, as MVTec-sized inputs
        files.append(folder / f"{i:05d}.png")
        tests[i % len(tests)].resize((256, 256)).save(files[-1])

    machine = (f"{platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}"
               + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    print(f"machine: {machine}", flush=True)
    document = {"machine": machine, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "category": first.name, "image_size": args.image_size, "rows": [], "notes": {}}
    full_cuda = None
    for device in args.devices.split(","):
        result = guarded(device, bench_device, device, first, pictures, files, args.image_size, coreset_shape)
        document["rows"] += result.get("rows", [])
        document["notes"][device] = result.get("notes", result)
        if device == "cuda" and "models" in result:
            full_cuda = result["models"][1.0]
        if args.out:  # what is measured so far survives a later failure or a timeout
            args.out.write_text(json.dumps(document, indent=2, default=str))
    if full_cuda is not None:
        document["notes"]["cuda extras"] = guarded("cuda extras", cuda_extras, categories, args.image_size, pictures,
                                                   full_cuda)
    if document["rows"]:
        print(markdown(document["rows"]))
    print(json.dumps(document["notes"], indent=2, default=str))
    if args.out:
        args.out.write_text(json.dumps(document, indent=2, default=str))


if __name__ == "__main__":
    main()
