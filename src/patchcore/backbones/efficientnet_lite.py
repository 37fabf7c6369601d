"""EfficientNet-Lite architecture (no squeeze-excitation, ReLU6), loadable from the Lite checkpoints."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BATCHNORM_EPS = 1e-3


@dataclass(frozen=True)
class StageSpec:
    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    out_channels: int


# Stage tables of the published Lite variants: kernels and strides are shared, repeats and
# widths scale with the variant. Checked against the checkpoints' tensor shapes.
_KERNELS = (3, 3, 5, 3, 5, 5, 3)
_STRIDES = (1, 2, 2, 2, 1, 2, 1)
_EXPANDS = (1, 6, 6, 6, 6, 6, 6)


def _stages(repeats: Sequence[int], widths: Sequence[int]) -> tuple[StageSpec, ...]:
    return tuple(StageSpec(*args) for args in zip(repeats, _KERNELS, _STRIDES, _EXPANDS, widths))


LITE_STAGES: dict[str, tuple[StageSpec, ...]] = {
    "efficientnet_lite0": _stages((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320)),
    "efficientnet_lite1": _stages((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320)),
    "efficientnet_lite2": _stages((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352)),
}


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'same' padding, asymmetric for stride 2, as the checkpoints were trained."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride = self.stride[0]
        kernel = self.kernel_size[0]
        if stride == 1:
            return F.conv2d(x, self.weight, self.bias, 1, kernel // 2, 1, self.groups)
        height, width = x.shape[-2:]
        pad_h = max((math.ceil(height / stride) - 1) * stride + kernel - height, 0)
        pad_w = max((math.ceil(width / stride) - 1) * stride + kernel - width, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, stride, 0, 1, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual block: expand 1x1, depthwise kxk, project 1x1."""

    conv_bn_pairs = (("expand_conv", "bn0"), ("depthwise_conv", "bn1"), ("project_conv", "bn2"))

    def __init__(self, in_channels: int, spec: StageSpec, stride: int) -> None:
        super().__init__()
        hidden = in_channels * spec.expand_ratio
        self.has_expansion = spec.expand_ratio != 1
        if self.has_expansion:
            self.expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self.bn0 = nn.BatchNorm2d(hidden, eps=BATCHNORM_EPS)
        self.depthwise_conv = SameConv2d(hidden, hidden, spec.kernel_size, stride, groups=hidden, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden, eps=BATCHNORM_EPS)
        self.project_conv = nn.Conv2d(hidden, spec.out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(spec.out_channels, eps=BATCHNORM_EPS)
        self.use_residual = stride == 1 and in_channels == spec.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expansion:
            out = F.relu6(self.bn0(self.expand_conv(out)))
        out = F.relu6(self.bn1(self.depthwise_conv(out)))
        out = self.bn2(self.project_conv(out))
        return out + x if self.use_residual else out


class _Stem(nn.Module):
    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, conv: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn(self.conv(x)))


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with state-dict keys of the Lite checkpoints, minus their leading underscores."""

    conv_bn_pairs = (("conv_stem", "bn0"), ("conv_head", "bn1"))

    def __init__(self, stages: Sequence[StageSpec], num_classes: int = 1000) -> None:
        super().__init__()
        stem_channels, head_channels = 32, 1280
        self.conv_stem = SameConv2d(3, stem_channels, 3, 2, bias=False)
        self.bn0 = nn.BatchNorm2d(stem_channels, eps=BATCHNORM_EPS)
        blocks = []
        in_channels = stem_channels
        for spec in stages:
            for repeat in range(spec.repeats):
                blocks.append(MBConvBlock(in_channels, spec, spec.stride if repeat == 0 else 1))
                in_channels = spec.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.conv_head = nn.Conv2d(in_channels, head_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(head_channels, eps=BATCHNORM_EPS)
        self.fc = nn.Linear(head_channels, num_classes)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The forward pass as named steps in order; feature taps name one of them."""
        steps: list[tuple[str, nn.Module]] = [("stem", _Stem(self.conv_stem, self.bn0))]
        steps += [(f"blocks.{i}", block) for i, block in enumerate(self.blocks)]
        steps.append(("head", _Stem(self.conv_head, self.bn1)))
        return steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, step in self.stages():
            x = step(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    @staticmethod
    def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map the checkpoint's `_blocks.0._bn1.weight` keys to this module's `blocks.0.bn1.weight`."""
        return {key.lstrip("_").replace("._", "."): value for key, value in state_dict.items()}


def build_efficientnet_lite(variant: str) -> EfficientNetLite:
    return EfficientNetLite(LITE_STAGES[variant])
