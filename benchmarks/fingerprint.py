"""What a refactoring must not change: per category, the fitted bank, the nominal scores, test scores and maps
(as sha256 digests and values), with the fit time and how many training images fit decoded.

    python benchmarks/fingerprint.py data/offline --categories brick,elpv_mono --out before.json
    python benchmarks/fingerprint.py data/offline --categories brick,elpv_mono --out after.json --compare before.json

`--compare` prints, per category, what is bit-identical and the largest difference of what is not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

import patchcore.io.images as images
from patchcore import PatchCore
from patchcore.data.categories import load_category


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def fingerprint(root: Path, name: str, test_images: int) -> dict:
    category = load_category(root, name)
    decodes = []
    decode = images._decode

    def counting(file, *args, **kwargs):
        decodes.append(str(file))
        return decode(file, *args, **kwargs)

    images._decode = counting
    try:
        started = time.perf_counter()
        model = PatchCore().fit(list(category.train_images))
        fit_seconds = time.perf_counter() - started
    finally:
        images._decode = decode
    tests = [sample.image for sample in category.test_samples][:: max(1, len(category.test_samples) // test_images)][:test_images]
    predictions = model.predict(tests)
    maps = np.concatenate([p.anomaly_map.ravel() for p in predictions])
    return {
        "category": name,
        "train_images": len(category.train_images),
        "fit_seconds": round(fit_seconds, 2),
        "decodes_in_fit": len(decodes),
        "bank_shape": list(model.memory_bank_.shape),
        "bank_sha256": digest(model.memory_bank_),
        "nominal_sha256": digest(np.asarray(model.nominal_scores_, dtype=np.float64)),
        "nominal_scores": [float(s) for s in model.nominal_scores_],
        "nominal_map_range": list(model.nominal_map_range_),
        "test_scores_sha256": digest(np.array([p.score for p in predictions])),
        "test_scores": [p.score for p in predictions],
        "maps_sha256": digest(maps),
        "maps": maps[:: max(1, len(maps) // 20000)].tolist(),  # a sample, to size a difference
    }


def compare(before: dict, after: dict) -> str:
    lines = []
    for name, old in before.items():
        new = after.get(name)
        if new is None:
            continue
        parts = [f"{name}: fit {old['fit_seconds']:.1f} -> {new['fit_seconds']:.1f} s, "
                 f"decodes {old['decodes_in_fit']} -> {new['decodes_in_fit']}"]
        for key, values in (("bank", None), ("nominal", "nominal_scores"), ("test_scores", "test_scores"),
                            ("maps", "maps")):
            if old[f"{key}_sha256"] == new[f"{key}_sha256"]:
                parts.append(f"{key} identical")
            elif values is None:
                parts.append(f"{key} DIFFERS")
            else:
                gap = np.max(np.abs(np.array(old[values]) - np.array(new[values])))
                scale = np.max(np.abs(old[values]))
                parts.append(f"{key} differ by <= {gap:.3g} ({gap / scale:.1e} relative)")
        lines.append("; ".join(parts))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--categories", required=True)
    parser.add_argument("--test-images", type=int, default=12, help="Test images predicted per category.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path, default=None, help="An earlier --out file.")
    args = parser.parse_args()
    results = {}
    for name in args.categories.split(","):
        results[name] = fingerprint(args.root, name, args.test_images)
        print(f"{name}: fit {results[name]['fit_seconds']} s, {results[name]['decodes_in_fit']} decodes", flush=True)
        args.out.write_text(json.dumps(results, indent=1))  # after each category: a long run keeps what it measured
    if args.compare is not None:
        print(compare(json.loads(args.compare.read_text()), results))


if __name__ == "__main__":
    main()
