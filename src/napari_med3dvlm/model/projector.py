"""Projectors that turn DCFormer tokens into LLM input embeddings.

Med3DVLM's default is the dual-stream MLP-Mixer (``"mixer"``): the fine stage-3 tokens (low stream)
and the coarse stage-4 tokens (high stream) are each re-sampled in the token axis and widened in the
channel axis, then concatenated into ``N_low + N_high`` image embeddings. Module and parameter names
follow the published checkpoints (``low_mixer.0.mlp1.mm_projector.1.1.weight`` ...), so their weights
load with ``strict=True``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import nn


class MLPProjector(nn.Module):
    """``Linear(in, out)`` followed by ``mlp_depth - 1`` x (GELU, Linear(out, out)); no final activation.

    Each (GELU, Linear) pair is its own ``Sequential`` so checkpoint keys read ``mm_projector.1.1.weight``.
    This is also the reference's ``"mlp"`` projector type.
    """

    def __init__(self, input_size: int, output_size: int, mlp_depth: int = 2) -> None:
        super().__init__()
        if mlp_depth < 1:
            raise ValueError(f"mlp_depth must be >= 1, got {mlp_depth}")
        self.input_size = input_size
        self.output_size = output_size
        self.mm_projector = nn.Sequential(
            nn.Linear(input_size, output_size),
            *[nn.Sequential(nn.GELU(), nn.Linear(output_size, output_size)) for _ in range(mlp_depth - 1)],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mm_projector(x)


class MixerLayer(nn.Module):
    """One MLP-Mixer step without residuals: LN -> token MLP (N -> N') -> LN -> channel MLP (C -> C').

    Both LayerNorms act on the *input* channel width C, as in the reference (no residual connections,
    so the shapes may change freely from layer to layer).
    """

    def __init__(self, input_size: Tuple[int, int], output_size: Tuple[int, int], mlp_depth: int = 2) -> None:
        super().__init__()
        in_tokens, in_channels = input_size
        out_tokens, out_channels = output_size
        self.input_size = (in_tokens, in_channels)
        self.output_size = (out_tokens, out_channels)
        self.ln1 = nn.LayerNorm(in_channels)
        self.ln2 = nn.LayerNorm(in_channels)
        self.mlp1 = MLPProjector(in_tokens, out_tokens, mlp_depth)  # token mixing
        self.mlp2 = MLPProjector(in_channels, out_channels, mlp_depth)  # channel mixing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x)
        x = self.mlp1(x.transpose(1, 2)).transpose(1, 2)
        x = self.ln2(x)
        return self.mlp2(x)


def _mixer_stream(input_size: Sequence[int], token_sizes: Sequence[int], output_dim: int, mlp_depth: int) -> nn.ModuleList:
    # Channels double at every layer and reach output_dim at the last one: C_i = output_dim / 2**(depth-1-i).
    depth = len(token_sizes)
    layers = []
    in_size = (int(input_size[0]), int(input_size[1]))
    for i, tokens in enumerate(token_sizes):
        out_size = (int(tokens), output_dim // 2 ** (depth - 1 - i))
        layers.append(MixerLayer(in_size, out_size, mlp_depth))
        in_size = out_size
    return nn.ModuleList(layers)


class MixerProjector(nn.Module):
    """Dual-stream MLP-Mixer projector (the reference's ``MixerLowHighHybridMLP``).

    ``forward(low_tokens, high_tokens)`` maps ``(B, N_low_in, C_low)`` and ``(B, N_high_in, C_high)`` to
    ``(B, low_output_size[-1] + high_output_size[-1], output_dim)``. For Med3DVLM-Qwen-7B that is
    (B,256,384) + (B,32,768) -> (B,256,3584).
    """

    def __init__(
        self,
        low_input_size: Sequence[int] = (256, 384),
        high_input_size: Sequence[int] = (32, 768),
        low_output_size: Sequence[int] = (192, 128),
        high_output_size: Sequence[int] = (64, 128),
        output_dim: int = 3584,
        mlp_depth: int = 2,
    ) -> None:
        super().__init__()
        if len(low_output_size) != len(high_output_size) or len(low_output_size) == 0:
            raise ValueError("low_output_size and high_output_size need the same, non-zero number of layers")
        depth = len(low_output_size)
        if output_dim % 2 ** (depth - 1) != 0:
            raise ValueError(f"output_dim={output_dim} must be divisible by 2**(depth-1)={2 ** (depth - 1)}")
        self.low_input_size = tuple(int(v) for v in low_input_size)
        self.high_input_size = tuple(int(v) for v in high_input_size)
        self.low_output_size = tuple(int(v) for v in low_output_size)
        self.high_output_size = tuple(int(v) for v in high_output_size)
        self.output_dim = int(output_dim)
        self.low_mixer = _mixer_stream(self.low_input_size, self.low_output_size, self.output_dim, mlp_depth)
        self.high_mixer = _mixer_stream(self.high_input_size, self.high_output_size, self.output_dim, mlp_depth)

    @property
    def num_output_tokens(self) -> int:
        """Image embeddings per volume (the reference's ``proj_out_num``)."""
        return self.low_output_size[-1] + self.high_output_size[-1]

    @staticmethod
    def _check(name: str, tokens: torch.Tensor, expected: Tuple[int, int]) -> None:
        if tokens.ndim != 3 or tuple(tokens.shape[1:]) != expected:
            raise ValueError(
                f"MixerProjector {name} stream expects (B, {expected[0]}, {expected[1]}) tokens; "
                f"got {tuple(tokens.shape)}"
            )

    def forward(
        self,
        low_tokens: Union[torch.Tensor, Sequence[torch.Tensor]],
        high_tokens: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if high_tokens is None:  # also accept the [s3, s4] list straight from the encoder
            low_tokens, high_tokens = low_tokens
        self._check("low", low_tokens, self.low_input_size)
        self._check("high", high_tokens, self.high_input_size)
        for layer in self.low_mixer:
            low_tokens = layer(low_tokens)
        for layer in self.high_mixer:
            high_tokens = layer(high_tokens)
        return torch.cat([low_tokens, high_tokens], dim=1)


def build_projector(projector_type: str = "mixer", **cfg: Any) -> nn.Module:
    """Build a projector by the reference's ``mm_projector_type`` name.

    - ``"mixer"``: :class:`MixerProjector` (keyword args of its constructor);
    - ``"mlp"``: :class:`MLPProjector` (``input_size``, ``output_size``, ``mlp_depth``);
    - ``"linear"``: ``nn.Linear(input_size, output_size)``.
    """
    if projector_type == "mixer":
        return MixerProjector(**cfg)
    if projector_type == "mlp":
        return MLPProjector(cfg["input_size"], cfg["output_size"], cfg.get("mlp_depth", 2))
    if projector_type == "linear":
        return nn.Linear(cfg["input_size"], cfg["output_size"])
    raise ValueError(f"unknown projector_type {projector_type!r}; expected 'mixer', 'mlp' or 'linear'")
