"""ONNX export of a fitted PatchCore: one graph from preprocessed images to image scores and anomaly maps."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from patchcore.core.patchcore import PatchCore
from patchcore.core.scoring import anomaly_maps, image_scores, map_operators
from patchcore.io.persistence import usual_permissions
from patchcore.search import BankSearch

DEFAULT_MAX_BANK_ROWS = 100_000
OPSET = 18


class ScoringGraph(nn.Module):
    """A fitted PatchCore as one module for export: backbone and patch features, exact search of the
    memory bank, and the library's own scoring (`patchcore.core.scoring`: Eq. 7 and the blurred map).

    Built from copies: exporting never moves or changes the fitted model (a CUDA model stays on CUDA).
    """

    def __init__(self, model: PatchCore) -> None:
        super().__init__()
        self.extractor = copy.deepcopy(model.extractor_).cpu().to(memory_format=torch.contiguous_format)
        self.search = BankSearch(model.memory_bank_)
        self.reweight = model.reweight
        self.num_neighbours = model.num_neighbours
        size = (model.image_size, model.image_size)
        for name, operator in zip(("map_rows", "map_columns"), map_operators(model.feature_grid_, size, model.blur_sigma)):
            self.register_buffer(name, operator.clone())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The extractor's own forward runs in inference mode, which export cannot trace; same operations.
        features = self.extractor._patch_features(self.extractor._taps(images))  # (B, h, w, D)
        batch, height, width, dim = features.shape
        patches = features.reshape(batch, height * width, dim)
        distances, nearest = self.search(patches.reshape(-1, dim), 1)
        patch_scores = distances[:, 0].reshape(batch, height * width)
        scores = image_scores(patches, patch_scores, nearest[:, 0].reshape(batch, height * width), self.search.bank,
                              self.search, self.num_neighbours, self.reweight)
        maps = anomaly_maps(patch_scores.reshape(batch, height, width), self.map_rows, self.map_columns)
        return scores, maps


def export_onnx(model: PatchCore, path: str | Path, max_bank_rows: int = DEFAULT_MAX_BANK_ROWS) -> Path:
    """Write `model` as one ONNX graph: input `images` (batch, 3, S, S) preprocessed as the manifest
    says; outputs `scores` (batch,) and `anomaly_maps` (batch, S, S) on the S x S crop."""
    if not isinstance(model, PatchCore):
        raise ValueError(f"only PatchCore models export to ONNX, not {type(model).__name__}")
    model._check_fitted()
    rows = model.memory_bank_.shape[0]
    if rows > max_bank_rows:
        raise ValueError(
            f"memory bank has {rows} entries, more than the {max_bank_rows} an exported graph may hold "
            f"(each image compares every patch with every entry); refit with a smaller --coreset-ratio or "
            f"raise --max-bank-rows"
        )
    graph = ScoringGraph(model).eval()
    example = torch.zeros(2, 3, model.image_size, model.image_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        with torch.no_grad():
            torch.onnx.export(
                graph, (example,), staging, input_names=["images"], output_names=["scores", "anomaly_maps"],
                dynamic_shapes={"images": {0: batch}}, opset_version=OPSET, dynamo=True, verbose=False,
            )
        _add_metadata(staging, model)
        usual_permissions(Path(staging))
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def _add_metadata(path: str, model: PatchCore) -> None:
    """Record how inputs must be preprocessed and what the model is, inside the ONNX file."""
    import onnx

    proto = onnx.load(path)
    preprocessing = {"resize": model.preprocessor_.resize, "crop_size": model.preprocessor_.crop_size,
                     "mean": list(model.preprocessor_.mean), "std": list(model.preprocessor_.std),
                     "order": "RGB, resize (bilinear) to resize x resize, centre crop, /255, (x - mean) / std"}
    threshold = model.decision_threshold()
    entries = {
        "preprocessing": json.dumps(preprocessing),
        "backbone": model.backbone,
        "memory_bank_shape": json.dumps(list(model.memory_bank_.shape)),
        "threshold": json.dumps(None if threshold is None else threshold.value),
        "false_alarm_rate": json.dumps(model.false_alarm_rate),
        "search": "exact",
    }
    for key, value in entries.items():
        item = proto.metadata_props.add()
        item.key, item.value = key, value
    onnx.save(proto, path)


def check_against_pytorch(model: PatchCore, path: str | Path, n_images: int = 2, seed: int = 0) -> tuple[float, float]:
    """Largest absolute differences (scores, maps) between onnxruntime on the exported file and the
    PyTorch graph it was exported from, on seeded random inputs of the model's crop size."""
    import onnxruntime

    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, 3, model.image_size, model.image_size, generator=generator)
    with torch.no_grad():
        scores, maps = ScoringGraph(model).eval()(images)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_scores, onnx_maps = session.run(None, {"images": images.numpy()})
    return float(np.abs(onnx_scores - scores.numpy()).max()), float(np.abs(onnx_maps - maps.numpy()).max())
