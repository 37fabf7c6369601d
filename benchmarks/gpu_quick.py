"""gpu.py's main measures on CUDA alone, each batch-1 time twice, for a lease's last minutes: ms per image at
batch 1, 16 and 64 with 1 %, 10 % and 100 % banks, PNG files per second at batch 64, and the coreset.

    python benchmarks/gpu_quick.py              # brick from data/offline; writes $OUT/final.json
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu import files_per_second, image_auroc, make_model, per_image_ms, time_coreset  # noqa: E402
from patchcore.data.categories import load_category  # noqa: E402
from patchcore.io.images import load_image  # noqa: E402

device = "cuda" if torch.cuda.is_available() else "cpu"
category = load_category(Path("data/offline"), "brick")
tests = [load_image(s.image) for s in category.test_samples]
pictures = [tests[i % len(tests)] for i in range(256 if device == "cuda" else 16)]
folder = Path(tempfile.mkdtemp())
files = []
for i in range(2048 if device == "cuda" else 64):
    files.append(folder / f"{i:05d}.png")
    tests[i % len(tests)].resize((256, 256)).save(files[-1])
out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
       "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None}
for ratio in (0.01, 0.1, 1.0):
    model = make_model(device, ratio, 224).fit(list(category.train_images))
    row = {f"b{b}": round(per_image_ms(device, model, pictures, b), 3) for b in (1, 16, 64)}
    row["b1 again"] = round(per_image_ms(device, model, pictures, 1), 3)
    if ratio == 0.1:
        row["files/s b64"] = [round(files_per_second(device, model, files, None), 1) for _ in range(2)]
        row["AUROC"] = round(image_auroc(model, category), 2)
    out[f"{ratio:.0%}"] = row
    print(json.dumps({f"{ratio:.0%}": row}), flush=True)
out["coreset 200000x1024 s"] = [time_coreset(device, (200_000 if device == "cuda" else 20_000, 1024)) for _ in range(2)]
print(json.dumps(out), flush=True)
Path(os.environ.get("OUT", "/tmp"), "final.json").write_text(json.dumps(out, indent=1))
