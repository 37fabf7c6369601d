"""Compare backbones, feature taps and image sizes by image AUROC on benchmark categories.

    python benchmarks/compare_settings.py data/offline --categories elpv_mono,elpv_poly --out docs/...

Each setting is fitted and evaluated per category with the same seed; prints and writes a Markdown
table (image AUROC per category, and pixel AUROC / PRO means where masks exist).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from patchcore.data.categories import load_category
from patchcore.evaluation.evaluate import evaluate_category, machine_description
from patchcore.core.patchcore import PatchCore
from patchcore.evaluation.experiments import paper_protocol

SETTINGS: dict[str, dict] = {
    "lite2 blocks 6+14 (default)": {},
    "lite2 blocks 6+10": {"layers": ("blocks.6", "blocks.10"), "feature_dim": 136},
    "lite2 blocks 3+6": {"layers": ("blocks.3", "blocks.6"), "feature_dim": 72},
    "lite2 blocks 6+14+19": {"layers": ("blocks.6", "blocks.14", "blocks.19"), "feature_dim": 168},
    "lite2 blocks 6+14, 320 px": paper_protocol(320),
    "lite1 blocks 6+14": {"backbone": "efficientnet_lite1"},
    "lite0 blocks 4+10": {"backbone": "efficientnet_lite0"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--categories", required=True)
    parser.add_argument("--coreset-ratio", type=float, default=0.01)
    parser.add_argument("--settings", default=None, help="Comma-separated subset of the setting names' keys.")
    parser.add_argument("--out", type=Path, required=True, help="Markdown file to write.")
    args = parser.parse_args()
    categories = [load_category(args.root, name) for name in args.categories.split(",")]
    chosen = {k: v for k, v in SETTINGS.items() if not args.settings or k in args.settings.split(",")}
    rows = []
    for label, params in chosen.items():
        results = [
            evaluate_category(c, lambda: PatchCore(coreset_ratio=args.coreset_ratio, **params)) for c in categories
        ]
        row = {"setting": label, **{r.category: r.image_auroc for r in results}}
        row["mean"] = float(np.mean([r.image_auroc for r in results]))
        pixel = [r.pixel_auroc for r in results if r.pixel_auroc is not None]
        row["pixel AUROC mean"] = float(np.mean(pixel)) if pixel else None
        row["PRO mean"] = float(np.mean([r.pro for r in results if r.pro is not None])) if pixel else None
        row["s / image"] = float(np.mean([r.seconds_per_image for r in results]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row[c] if isinstance(row[c], str) else ("n/a" if row[c] is None else f"{row[c]:.{3 if c == 's / image' else 1}f}") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    header = (
        f"Command: `python {' '.join(sys.argv)}`\n\nDate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Machine: {machine_description()}. Coreset {args.coreset_ratio:.0%}, seed 0.\n\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
