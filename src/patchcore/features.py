"""Locally aware patch features: backbone taps, p x p neighbourhood averaging, level merging (Eq. 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from patchcore.backbones import LoadedBackbone


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
        feature_dim: int,
    ) -> None:
        super().__init__()
        steps = backbone.module.stages()
        names = [name for name, _ in steps]
        unknown = [layer for layer in layers if layer not in names]
        if not layers or unknown:
            raise ValueError(
                f"unknown layers {unknown} for backbone {backbone.spec.name!r}; choose from {names}"
            )
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be an odd number >= 1, got {patch_size}")
        last = max(names.index(layer) for layer in layers)
        # The forward pass stops after the deepest tap: later stages cost time and give nothing.
        self.steps = nn.ModuleList(step for _, step in steps[: last + 1])
        self.step_names = names[: last + 1]
        self.layers = tuple(layers)
        self.patch_size = patch_size
        channels = self._tap_channels()
        total = sum(channels)
        if not 1 <= feature_dim <= total:
            raise ValueError(
                f"feature_dim must be between 1 and {total} (the tapped layers' channels {channels}), "
                f"got {feature_dim}"
            )
        self.feature_dim = feature_dim
        for index, (in_channels, out_channels) in enumerate(zip(channels, split_evenly(feature_dim, len(layers)))):
            pooling = None if in_channels == out_channels else channel_pooling_matrix(in_channels, out_channels)
            self.register_buffer(f"pooling_{index}", pooling)

    @torch.inference_mode()
    def _tap_channels(self) -> list[int]:
        taps = self._taps(torch.zeros(1, 3, 64, 64))
        return [taps[layer].shape[1] for layer in self.layers]

    def _taps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        taps = {}
        x = images
        for name, step in zip(self.step_names, self.steps):
            x = step(x)
            if name in self.layers:
                taps[name] = x
        return taps

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        taps = self._taps(images)
        grids = [taps[layer] for layer in self.layers]
        target = max((grid.shape[-2:] for grid in grids), key=lambda size: size[0] * size[1])
        merged = []
        for index, grid in enumerate(grids):
            grid = F.avg_pool2d(grid, self.patch_size, stride=1, padding=self.patch_size // 2)
            pooling = getattr(self, f"pooling_{index}")
            if pooling is not None:
                # Channel pooling is per-pixel linear, so it commutes with the bilinear upsampling:
                # doing it first upsamples fewer channels.
                grid = torch.einsum("bchw,cd->bdhw", grid, pooling)
            if grid.shape[-2:] != target:
                grid = F.interpolate(grid, size=target, mode="bilinear", align_corners=False)
            merged.append(grid)
        return torch.cat(merged, dim=1).permute(0, 2, 3, 1).contiguous()
