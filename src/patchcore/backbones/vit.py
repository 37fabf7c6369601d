"""DINOv2 vision transformers (Oquab et al. 2023) in the official checkpoints' state-dict layout: patch tokens of
any layer, at any image size whose sides are multiples of the patch size (positional embeddings interpolated)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Positional embeddings are resized with the official code's offset: the scale factor is (n + 0.1) / side, which
# sidesteps a rounding quirk of scale-factor interpolation; the same call gives the same embeddings.
INTERPOLATE_OFFSET = 0.1


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class Embedding(nn.Module):
    """Image -> tokens: the class token, then the patch tokens row by row, each plus its position."""

    def __init__(self, dim: int, patch_size: int, pretrained_grid: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pretrained_grid**2, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # in the checkpoints; unused at inference
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def position_embeddings(self, rows: int, columns: int) -> torch.Tensor:
        """(1, 1 + rows * columns, C): the class token's, then the pretrained grid's resized to rows x columns."""
        side = math.isqrt(self.pos_embed.shape[1] - 1)
        if rows == side and columns == side:
            return self.pos_embed
        embedding = self.pos_embed.float()
        grid = embedding[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, mode="bicubic", scale_factor=((rows + INTERPOLATE_OFFSET) / side,
                                                                  (columns + INTERPOLATE_OFFSET) / side))
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * columns, -1)
        return torch.cat((embedding[:, :1], grid), dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(images)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        rows, columns = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        return tokens + self.position_embeddings(rows, columns).to(tokens.dtype)


class VisionTransformer(nn.Module):
    """A DINOv2 ViT: stages "embed", "blocks.0" ... "blocks.N-1", "norm"; each tap is its patch tokens as a
    (B, C, H / patch, W / patch) map (`feature_map`)."""

    def __init__(self, dim: int, depth: int, heads: int, patch_size: int = 14, pretrained_grid: int = 37) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed = Embedding(dim, patch_size, pretrained_grid)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [("embed", self.embed), *((f"blocks.{i}", block) for i, block in enumerate(self.blocks)),
                ("norm", self.norm)]

    def feature_map(self, tokens: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """A tap's patch tokens (the class token dropped) as a (B, C, rows, columns) map of the image."""
        rows, columns = image_size[0] // self.patch_size, image_size[1] // self.patch_size
        return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, rows, columns)

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The official checkpoints' keys: the embedding's parameters are under `embed.` here; chunked blocks
        ("blocks.0.5.") are unchunked."""
        converted = {}
        for key, value in state_dict.items():
            parts = key.split(".")
            if parts[0] == "blocks" and len(parts) > 3 and parts[2].isdigit():
                key = ".".join(["blocks", parts[2], *parts[3:]])
            elif parts[0] in ("patch_embed", "cls_token", "pos_embed", "mask_token"):
                key = f"embed.{key}"
            converted[key] = value
        return converted


# (embedding dim, depth, heads) of the published DINOv2 models with 14 px patches.
DINOV2_SIZES = {"dinov2_vits14": (384, 12, 6), "dinov2_vitb14": (768, 12, 12), "dinov2_vitl14": (1024, 24, 16)}


def build_dinov2(name: str) -> VisionTransformer:
    dim, depth, heads = DINOV2_SIZES[name]
    return VisionTransformer(dim, depth, heads)
