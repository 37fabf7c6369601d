"""ONNX export of a fitted PatchCore: one graph from preprocessed images to image scores and anomaly maps."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from patchcore.core.scoring import map_operator
from patchcore.core.patchcore import PatchCore
from patchcore.io.persistence import usual_permissions

DEFAULT_MAX_BANK_ROWS = 100_000
OPSET = 18


class ScoringGraph(nn.Module):
    """PatchCore's scoring as one module of tensor operations, for export: backbone and patch features,
    exact nearest-neighbour distances to the memory bank, Eq. 7 reweighting, and the blurred map.

    The library searches with faiss; this module computes the same quantities with matrix products
    (the map with the library's own upsample-and-blur operators), so an ONNX runtime needs nothing else.
    """

    def __init__(self, model: PatchCore) -> None:
        super().__init__()
        self.extractor = model.extractor_.to("cpu").to(memory_format=torch.contiguous_format)
        bank = torch.from_numpy(np.ascontiguousarray(model.memory_bank_, dtype=np.float32))
        self.register_buffer("bank", bank)
        self.register_buffer("bank_squared_norms", (bank.double() ** 2).sum(dim=1).float())
        self.reweight = model.reweight and model.num_neighbours > 1
        self.num_neighbours = min(model.num_neighbours, len(bank))
        height, width = model.feature_grid_
        for name, grid_size in (("map_rows", height), ("map_columns", width)):
            operator = map_operator(grid_size, model.image_size, float(model.blur_sigma))
            self.register_buffer(name, operator.clone())

    def squared_distances(self, queries: torch.Tensor) -> torch.Tensor:
        query_norms = (queries * queries).sum(dim=1, keepdim=True)
        return (query_norms - 2.0 * queries @ self.bank.T + self.bank_squared_norms[None, :]).clamp_min(0.0)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.extractor._patch_features(self.extractor._taps(images))  # (B, h, w, D)
        batch, height, width, dim = features.shape
        patches = features.reshape(batch, height * width, dim)
        nearest_squared, nearest = self.squared_distances(patches.reshape(-1, dim)).min(dim=1)
        patch_scores = nearest_squared.sqrt().reshape(batch, height * width)
        worst = patch_scores.argmax(dim=1, keepdim=True)
        scores = patch_scores.gather(1, worst)[:, 0]
        if self.reweight:
            anchors = nearest.reshape(batch, height * width).gather(1, worst)[:, 0]
            # N_b(m*): the b bank entries nearest m*, m* itself (distance 0) first.
            _, support = self.squared_distances(self.bank[anchors]).topk(self.num_neighbours, dim=1, largest=False)
            worst_patch = patches.gather(1, worst[:, :, None].expand(batch, 1, dim))
            to_support = (self.bank[support] - worst_patch).pow(2).sum(dim=2).sqrt()
            scores = (1.0 - torch.softmax(to_support, dim=1)[:, 0]) * scores
        maps = self.map_rows @ patch_scores.reshape(batch, height, width) @ self.map_columns.T
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
