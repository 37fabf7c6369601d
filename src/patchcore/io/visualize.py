"""Heatmap overlays of anomaly maps on images, as PIL images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from patchcore.io.images import ImageInput, load_image
from patchcore.io.persistence import atomic_write_bytes

# Anchors of a perceptually ordered dark-blue -> yellow -> red ramp.
_RAMP_POSITIONS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_RAMP_COLOURS = np.array(
    [[20, 20, 90], [30, 110, 200], [60, 200, 120], [250, 220, 40], [220, 30, 30]], dtype=np.float64
)


def colorize(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map values to RGB uint8 along the ramp, clipping outside [vmin, vmax]."""
    scaled = np.clip((values - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    channels = [np.interp(scaled, _RAMP_POSITIONS, _RAMP_COLOURS[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def overlay(image: Image.Image, anomaly_map: np.ndarray, vmin: float, vmax: float, alpha: float = 0.5) -> Image.Image:
    """Blend the colourised map over the image; the map must have the image's size."""
    if anomaly_map.shape != (image.height, image.width):
        raise ValueError(f"map shape {anomaly_map.shape} differs from image size {(image.height, image.width)}")
    heat = Image.fromarray(colorize(anomaly_map, vmin, vmax))
    return Image.blend(image.convert("RGB"), heat, alpha)


def display_range(anomaly_map: np.ndarray, nominal_map_range: tuple[float, float] | None) -> tuple[float, float]:
    """Colour range: good images' median pixel is cold, their maximum mid-scale; else the map's own range."""
    if nominal_map_range is None:
        return float(anomaly_map.min()), float(anomaly_map.max())
    median, peak = nominal_map_range
    return median, peak + (peak - median)


def overlay_png(image: ImageInput, anomaly_map: np.ndarray, nominal_map_range: tuple[float, float] | None) -> bytes:
    """The heatmap overlay of `image` as PNG bytes."""
    vmin, vmax = display_range(anomaly_map, nominal_map_range)
    buffer = io.BytesIO()
    overlay(load_image(image), anomaly_map, vmin, vmax).save(buffer, format="PNG")
    return buffer.getvalue()


def write_overlay(
    path: Path, image: ImageInput, anomaly_map: np.ndarray, nominal_map_range: tuple[float, float] | None
) -> None:
    """Write the heatmap overlay of `image` as a PNG at `path`, atomically."""
    atomic_write_bytes(path, overlay_png(image, anomaly_map, nominal_map_range))
