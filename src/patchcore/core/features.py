"""Locally aware patch features: backbone taps, p x p neighbourhood averaging with stride (Eq. 1, 3), level merging."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from patchcore.backbones import LoadedBackbone
from patchcore.backbones.fusion import fuse_batchnorm


def channel_pooling_matrix(in_channels: int, out_channels: int) -> torch.Tensor:
    """(in, out) matrix equal to adaptive average pooling over the channel axis.

    With out > in, channels repeat: that is what the official code does to give every level
    the same weight; the feature extractor refuses a total larger than its inputs.
    """
    matrix = torch.zeros(in_channels, out_channels)
    for column in range(out_channels):
        start = (column * in_channels) // out_channels
        end = -((-(column + 1) * in_channels) // out_channels)
        matrix[start:end, column] = 1.0 / (end - start)
    return matrix


def split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class FeatureExtractor(nn.Module):
    """Image batch (B, 3, H, W) -> patch features (B, h, w, feature_dim) on the finest tapped grid."""

    def __init__(
        self,
        backbone: LoadedBackbone,
        layers: Sequence[str],
        patch_size: int,
        feature_dim: int | None,
        stride: int = 1,
        global_layer: str | None = None,
        unit_length: bool = False,
    ) -> None:
        """`feature_dim` None keeps every tapped channel (raw concatenation, as SPADE and PaDiM use);
        `global_layer` adds a globally pooled image vector from that stage (`forward_with_global`);
        `unit_length` scales each patch feature to length 1, so Euclidean distances order as cosine distances."""
        super().__init__()
        steps = backbone.module.stages()
        names = [name for name, _ in steps]
        unknown = [layer for layer in (*layers, *([global_layer] if global_layer else [])) if layer not in names]
        if not layers or unknown:
            raise ValueError(
                f"unknown layers {unknown} for backbone {backbone.spec.name!r}; choose from {names} "
                f"or level1..level{len(backbone.spec.levels)}"
            )
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be an odd number >= 1, got {patch_size}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        last = max(names.index(layer) for layer in (*layers, *([global_layer] if global_layer else [])))
        # The forward pass stops after the deepest tap: later stages cost time and give nothing.
        # Folded batch norms: 1.2x (batch 1) to 1.8x (batch 16) faster for Lite0 on this CPU
        # (benchmarks/batchnorm_fusion.py), same features to 2e-5.
        self.steps = fuse_batchnorm(nn.ModuleList(step for _, step in steps[: last + 1]))
        self.step_names = names[: last + 1]
        # A transformer's steps pass tokens; its taps become maps of the image (CNN taps are maps already).
        self.feature_map = getattr(backbone.module, "feature_map", None)
        self.size_multiple = backbone.spec.size_multiple
        self.layers = tuple(layers)
        self.global_layer = global_layer
        self.unit_length = unit_length
        self.patch_size = patch_size
        self.stride = stride
        self.autocast_dtype: torch.dtype | None = None  # set by the detector from its `precision`
        channels, finest_stride = self._probe()
        # Pixels per patch-grid cell: the finest tap's stride times the patch stride (Eq. 3).
        self.grid_stride = finest_stride * stride
        total = sum(channels)
        raw = feature_dim is None
        feature_dim = total if raw else feature_dim
        if not 1 <= feature_dim <= total:
            raise ValueError(
                f"feature_dim must be between 1 and {total} (the tapped layers' channels {channels}), "
                f"got {feature_dim}"
            )
        self.feature_dim = feature_dim
        # An explicit dimension gives every level an equal share (the official code's pooling), even when
        # it equals the total: levels with fewer channels are repeated up to their share.
        level_dims = channels if raw else split_evenly(feature_dim, len(layers))
        for index, (in_channels, out_channels) in enumerate(zip(channels, level_dims)):
            pooling = None if in_channels == out_channels else channel_pooling_matrix(in_channels, out_channels)
            self.register_buffer(f"pooling_{index}", pooling)

    @torch.inference_mode()
    def _probe(self) -> tuple[list[int], int]:
        """The tapped layers' channels, and the finest tap's stride in pixels."""
        side = 4 * self.size_multiple
        taps = self._taps(torch.zeros(1, 3, side, side))
        return [taps[layer].shape[1] for layer in self.layers], side // max(taps[layer].shape[-1] for layer in self.layers)

    def _taps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        taps = {}
        x = images
        for name, step in zip(self.step_names, self.steps):
            x = step(x)
            if name in self.layers or name == self.global_layer:
                taps[name] = x if self.feature_map is None else self.feature_map(x, images.shape[-2:])
        return taps

    def _autocast_taps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The taps, computed in `autocast_dtype` when set (reduced-precision convolutions), returned float32."""
        if self.autocast_dtype is None:
            return self._taps(images)
        # No weight-cast cache: CUDA graphs cannot capture one (and inference calls never reuse it).
        with torch.autocast(images.device.type, dtype=self.autocast_dtype, cache_enabled=False):
            taps = self._taps(images)
        return {name: tap.float() for name, tap in taps.items()}

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._finished(self._patch_features(self._autocast_taps(images)))

    def traceable(self, images: torch.Tensor) -> torch.Tensor:
        """`forward` in float32 outside inference mode, which ONNX export cannot trace: what exported graphs run."""
        return self._finished(self._patch_features(self._taps(images)))

    def _finished(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1) if self.unit_length else features

    @torch.inference_mode()
    def forward_with_global(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(patch features (B, h, w, D), global average of `global_layer` (B, C)) from one forward pass."""
        if self.global_layer is None:
            raise ValueError("this feature extractor was built without a global_layer")
        taps = self._autocast_taps(images)
        return self._patch_features(taps), taps[self.global_layer].mean(dim=(2, 3))

    def _patch_features(self, taps: dict[str, torch.Tensor]) -> torch.Tensor:
        merged = []
        grids = [
            F.avg_pool2d(taps[layer], self.patch_size, stride=self.stride, padding=self.patch_size // 2)
            for layer in self.layers
        ]
        target = max((grid.shape[-2:] for grid in grids), key=lambda size: size[0] * size[1])
        for index, grid in enumerate(grids):
            pooling = getattr(self, f"pooling_{index}")
            # Channel pooling is per-pixel linear, so it commutes with the bilinear upsampling: it goes
            # on whichever side has fewer channels to upsample. On channels-last taps a (B, h, w, C)
            # view is free and pooling is one matrix product (1.7x faster than einsum at batch 1).
            if grid.shape[-2:] != target:
                if pooling is not None and pooling.shape[1] < pooling.shape[0]:
                    grid, pooling = (grid.permute(0, 2, 3, 1) @ pooling).permute(0, 3, 1, 2), None
                grid = F.interpolate(grid, size=target, mode="bilinear", align_corners=False)
            grid = grid.permute(0, 2, 3, 1)
            merged.append(grid if pooling is None else grid @ pooling)
        return torch.cat(merged, dim=-1).contiguous()
