"""DCFormer: the decomposed-convolution 3D image encoder of Med3DVLM.

The encoder is a five-stage convolutional pyramid. Every 3D convolution is split into three 1-D
convolutions (one per axis) whose outputs are summed, which keeps large receptive fields affordable
on 128x256x256 CT volumes.

Layout trap
-----------
The model takes ``(B, 1, D, H, W)``: the (z, y, x) array order of SimpleITK / our ``Volume.data``
with a channel axis in front. Internally the network permutes to ``(B, C, H, W, D)`` (depth last)
and every stage output is flattened depth-major into ``(B, D*H*W, C)`` tokens. Any permutation of a
128x256x256 volume yields the same token *counts*, so a wrong axis order runs silently and produces
wrong features; set ``DCFormerConfig.expected_input_size`` to turn that into an error.

State-dict keys (``encoder.s0.0.0.c1.0.weight`` ...) match the published checkpoints without any
prefix, so ``load_state_dict(strict=True)`` works on the reference weights as they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# blocks per stage (s0..s4) and channels per stage, as published with the reference encoder.
DCFORMER_VARIANTS: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    "nano": ((1, 1, 1, 1, 1), (32, 32, 64, 128, 256)),
    "naive": ((1, 2, 2, 2, 2), (32, 64, 128, 256, 512)),
    "tiny": ((1, 2, 3, 3, 2), (64, 96, 192, 384, 768)),
    "small": ((1, 2, 3, 6, 2), (64, 96, 192, 384, 768)),
    "base": ((1, 2, 6, 6, 2), (64, 128, 256, 512, 1024)),
    "large": ((1, 2, 6, 12, 2), (64, 256, 512, 1024, 2048)),
}


@dataclass
class DCFormerConfig:
    """Hyper-parameters of a DCFormer; ``variant`` picks the published depth/width table.

    ``expected_input_size`` is an optional (D, H, W) guard: when set, inputs of any other spatial
    shape are rejected, which catches the silent axis-order mistake described in the module doc.
    """

    variant: str = "small"
    in_channels: int = 1
    kernel_sizes: Tuple[int, int, int, int] = (13, 11, 9, 7)
    mlp_ratio: int = 4
    layer_scale_init: float = 1e-6
    expected_input_size: Optional[Tuple[int, int, int]] = None
    # Optional overrides of the variant table (rarely needed; kept for custom research variants).
    blocks: Optional[Tuple[int, ...]] = field(default=None)
    channels: Optional[Tuple[int, ...]] = field(default=None)
    #: "decomposed" is the published stem (every published checkpoint); "patchify" is a research option
    #: that reads every voxel (see `PatchifyStem`), not loadable from published weights.
    stem: str = "decomposed"

    def __post_init__(self) -> None:
        if self.variant not in DCFORMER_VARIANTS:
            raise ValueError(
                f"unknown DCFormer variant {self.variant!r}; choose one of {sorted(DCFORMER_VARIANTS)}"
            )
        default_blocks, default_channels = DCFORMER_VARIANTS[self.variant]
        self.blocks = tuple(self.blocks) if self.blocks is not None else default_blocks
        self.channels = tuple(self.channels) if self.channels is not None else default_channels
        self.kernel_sizes = tuple(self.kernel_sizes)
        if self.expected_input_size is not None:
            self.expected_input_size = tuple(int(s) for s in self.expected_input_size)
        if len(self.blocks) != 5 or len(self.channels) != 5 or len(self.kernel_sizes) != 4:
            raise ValueError("DCFormer needs 5 stages (blocks, channels) and 4 stage kernel sizes")
        if self.stem not in STEMS:
            raise ValueError(f"unknown DCFormer stem {self.stem!r}; choose one of {sorted(STEMS)}")
        if self.blocks[0] != 1:
            # Each stem block downsamples by 4; the reference only ever uses a single one.
            raise ValueError("DCFormer supports exactly one stem block (blocks[0] == 1)")

    @property
    def hidden_sizes(self) -> Tuple[int, ...]:
        return self.channels

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, config: Dict[str, Any]) -> "DCFormerConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in known})


class DecomposedConv3d(nn.Module):
    """Sum of three axis-wise convolutions (k,1,1), (1,k,1), (1,1,k), each followed by BatchNorm.

    Submodules are named ``c1``/``c2``/``c3`` with ``[0]`` the conv and ``[1]`` the norm, as in the
    published checkpoints.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        norm: bool = True,
        activation: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        branches = []
        for axis in range(3):
            kernel = [1, 1, 1]
            padding = [0, 0, 0]
            kernel[axis] = kernel_size
            padding[axis] = pad
            conv = nn.Conv3d(
                in_channels,
                out_channels,
                kernel_size=tuple(kernel),
                stride=stride,
                padding=tuple(padding),
                groups=groups,
            )
            branches.append(nn.Sequential(conv, nn.BatchNorm3d(out_channels) if norm else nn.Identity()))
        self.c1, self.c2, self.c3 = branches
        self.act = activation if activation is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.c1(x) + self.c2(x) + self.c3(x))

    def folded(self) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Per branch, the convolution's weight and bias with the eval-mode BatchNorm folded in."""
        out = []
        for branch in (self.c1, self.c2, self.c3):
            conv, norm = branch[0], branch[1]
            bias = conv.bias if conv.bias is not None else torch.zeros_like(conv.weight[:, 0, 0, 0, 0])
            if isinstance(norm, nn.BatchNorm3d):
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                out.append((conv.weight * scale.view(-1, 1, 1, 1, 1), (bias - norm.running_mean) * scale + norm.bias))
            else:
                out.append((conv.weight, bias))
        return out

    def taps(self) -> Tuple[Dict[Tuple[int, int, int], torch.Tensor], torch.Tensor]:
        """The dense convolution as a cross-shaped stencil: {(dh, dw, dd) offset: (C_in, C_out) matrix}
        and one bias. The three branches' centre taps add up into one matrix (7 taps for k=3, not 9)."""
        taps: Dict[Tuple[int, int, int], torch.Tensor] = {}
        total_bias = 0
        k = self.c1[0].kernel_size[0]
        for axis, (weight, bias) in enumerate(self.folded()):
            for t in range(k):
                offset, index = [0, 0, 0], [0, 0, 0]
                offset[axis], index[axis] = t - k // 2, t
                key = tuple(offset)
                matrix = weight[:, :, index[0], index[1], index[2]].t()
                taps[key] = taps[key] + matrix if key in taps else matrix
            total_bias = total_bias + bias
        return {key: value.contiguous() for key, value in taps.items()}, total_bias

    def forward_padded(self, padded: torch.Tensor) -> torch.Tensor:
        """Inference on a zero-bordered channels-last buffer ``(B, H+2p, W+2p, D+2p, C)`` (p = k // 2),
        returning the same kind of buffer: each tap is one matrix product over a shifted row range of
        the flattened buffer (a neighbour along any axis is a fixed row offset there), accumulated into
        the output; the border rows get garbage and are zeroed again. Dense, stride 1 only."""
        conv = self.c1[0]
        if conv.groups != 1 or conv.stride != (1, 1, 1):
            raise ValueError("forward_padded takes a dense, stride-1 decomposed convolution")
        taps, bias = self.taps()
        batch, hp, wp, dp, channels = padded.shape
        pad = conv.kernel_size[0] // 2
        rows = padded.reshape(-1, channels)
        out = torch.empty(rows.shape[0], bias.shape[0], dtype=padded.dtype, device=padded.device)
        margin = pad * (wp * dp + dp + 1)  # the largest row offset of a tap; these rows are all border
        lo, hi = margin, rows.shape[0] - margin
        for i, ((dh, dw, dd), matrix) in enumerate(taps.items()):
            shift = dh * wp * dp + dw * dp + dd
            if i == 0:
                torch.addmm(bias.to(padded.dtype), rows[lo + shift : hi + shift], matrix, out=out[lo:hi])
            else:
                out[lo:hi].addmm_(rows[lo + shift : hi + shift], matrix)
        out = out.view(batch, hp, wp, dp, -1)
        if not isinstance(self.act, nn.Identity):
            out = self.act(out)
        return zero_border(out, pad)


def zero_border(padded: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero the ``pad``-wide border of the three spatial axes of a ``(B, H, W, D, C)`` buffer, in place."""
    for axis in (1, 2, 3):
        padded.narrow(axis, 0, pad).zero_()
        padded.narrow(axis, padded.shape[axis] - pad, pad).zero_()
    return padded


def strided_single_channel_padded(conv: DecomposedConv3d, x: torch.Tensor, pad: int) -> torch.Tensor:
    """Inference of a decomposed convolution with one input channel and stride s (the published stem's
    first k=7 / stride 4 layer) as one matrix product: the 3k - 2 distinct voxels each output reads
    (the branches share the centre) gathered by strided slicing, times a (3k - 2, C) matrix. Returns
    the output inside a zero-bordered channels-last buffer ``(B, H/s + 2 pad, ..., C)``."""
    taps, bias = conv.taps()
    k, stride = conv.c1[0].kernel_size[0], conv.c1[0].stride[0]
    half = k // 2
    batch, _, *spatial = x.shape
    sizes = [-(-n // stride) for n in spatial]  # (n + 2 half - k) // stride + 1, for odd k
    source = F.pad(x[:, 0], (half, half) * 3)
    columns = []
    for offset in taps:
        h, w, d = (half + o for o in offset)
        columns.append(source[:, h::stride, w::stride, d::stride][:, : sizes[0], : sizes[1], : sizes[2]])
    gathered = torch.stack(columns, dim=-1).reshape(-1, len(columns))
    matrix = torch.cat(list(taps.values()))  # (3k - 2, C)
    out = x.new_empty(batch, *(n + 2 * pad for n in sizes), matrix.shape[1])
    inner = out[:, pad : pad + sizes[0], pad : pad + sizes[1], pad : pad + sizes[2]]
    inner.copy_(torch.addmm(bias.to(x.dtype), gathered, matrix).view(batch, *sizes, -1))
    return zero_border(out, pad)


class DecomposedStem(nn.Sequential):
    """Four decomposed convolutions: k=7 / stride 4, then three k=3 / stride 1.

    Reproduced bug: the reference passes ``nn.GELU()`` positionally into the *norm* slot, so every
    stem conv has BatchNorm and **no activation**. The published weights were trained that way, so
    adding the GELU here would change their features.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            DecomposedConv3d(in_channels, out_channels, 7, stride=4),
            DecomposedConv3d(out_channels, out_channels, 3),
            DecomposedConv3d(out_channels, out_channels, 3),
            DecomposedConv3d(out_channels, out_channels, 3),
        )

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The same function for inference, as matrix products on one channels-last buffer (see
        `DecomposedConv3d.forward_padded`): BatchNorm folded, no per-branch outputs, no transposes
        between the four layers. Returns the ``(B, C, H, W, D)`` map of ``forward`` in channels-last
        memory (``channels_last_3d``), which the first stage's max-pool reads without a copy."""
        first, *rest = self
        pad = rest[0].c1[0].kernel_size[0] // 2
        buffer = strided_single_channel_padded(first, x, pad)
        for conv in rest:
            buffer = conv.forward_padded(buffer)
        inner = buffer[:, pad:-pad, pad:-pad, pad:-pad]
        return inner.contiguous().permute(0, 4, 1, 2, 3)


class PatchifyStem(nn.Sequential):
    """Research stem (not in any published checkpoint): a dense 4x4x4 / stride-4 convolution, BatchNorm and
    GELU, then three k=3 decomposed convolutions with GELU.

    The published stem's stride-4 one-axis convolutions only ever read voxels lying on lines through the
    stride-4 lattice, 10 of every 64 voxels; a 2-3 slice lesion between lattice planes is seen through a
    few lines only. This stem reads every voxel, at the same output shape and width.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 4, stride=4),
            nn.BatchNorm3d(out_channels),
            nn.GELU(),
            *[DecomposedConv3d(out_channels, out_channels, 3, activation=nn.GELU()) for _ in range(3)],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pad each spatial axis up to a multiple of 4: ceil(n / 4) outputs, as the published stem gives
        pads = []
        for n in reversed(x.shape[2:]):
            pads += [0, -n % 4]
        return super().forward(F.pad(x, pads) if any(pads) else x)


STEMS = {"decomposed": DecomposedStem, "patchify": PatchifyStem}


class ChannelMLP(nn.Module):
    """Channels-last MLP; the extra ``mlp`` level and the dropout slots keep checkpoint indices (0, 3)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(0.0),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(0.0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class DCFormerBlock(nn.Module):
    """ConvNeXt-like residual block: x + scale * MLP(depthwise decomposed conv(x)).

    The first block of a stage downsamples (max-pool /2, then a 1x1x1 projection to the new width).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        downsample: bool,
        mlp_ratio: int = 4,
        layer_scale_init: float = 1e-6,
    ) -> None:
        super().__init__()
        self.downsample = downsample
        if downsample:
            self.pool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
            self.proj = nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=False)
        self.dwconv = DecomposedConv3d(out_channels, out_channels, kernel_size, groups=out_channels)
        self.mlp = ChannelMLP(out_channels, out_channels * mlp_ratio)
        self.scale = nn.Parameter(torch.full((out_channels,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            # contiguous: the fused stem hands over a channels-last map (see `execution_for`)
            x = self.proj(self.pool(x).contiguous())
        update = self.dwconv(x).permute(0, 2, 3, 4, 1)  # channels last for the MLP
        update = self.scale * self.mlp(update)
        return x + update.permute(0, 4, 1, 2, 3)


class DCFormerStage(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, depth: int, kernel_size: int, config: DCFormerConfig):
        super().__init__(
            *[
                DCFormerBlock(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    kernel_size,
                    downsample=i == 0,
                    mlp_ratio=config.mlp_ratio,
                    layer_scale_init=config.layer_scale_init,
                )
                for i in range(depth)
            ]
        )


class DCFormerEncoder(nn.Module):
    """Stem ``s0`` plus stages ``s1``..``s4``; works on the depth-last ``(B, C, H, W, D)`` layout."""

    def __init__(self, config: DCFormerConfig) -> None:
        super().__init__()
        blocks, channels = config.blocks, config.channels
        self.s0 = nn.Sequential(STEMS[config.stem](config.in_channels, channels[0]))
        for i in range(1, 5):
            stage = DCFormerStage(channels[i - 1], channels[i], blocks[i], config.kernel_sizes[i - 1], config)
            self.add_module(f"s{i}", stage)

    def forward(self, x: torch.Tensor, fused: bool = False) -> List[torch.Tensor]:
        """``fused``: the stem's inference-only path (`DecomposedStem.forward_fused`), same function."""
        stem = self.s0[0]
        x = stem.forward_fused(x) if fused and isinstance(stem, DecomposedStem) else self.s0(x)
        maps = [x]
        for i in range(1, 5):
            x = getattr(self, f"s{i}")(x)
            maps.append(x)
        return maps


#: Overrides the encoder's execution everywhere: "auto", "channels_last" or "contiguous" (the reference).
LAYOUT_ENV = "NAPARI_MED3DVLM_DCFORMER_LAYOUT"


def execution_for(device: torch.device, preference: str = "auto") -> str:
    """How the encoder runs inference on ``device``: "fused", "channels_last" or "reference".

    - "fused" (CPU default): the published stem runs as matrix products on one channels-last buffer
      with BatchNorm folded (`DecomposedStem.forward_fused`); the stages run as in the reference.
      The stem is about three quarters of the reference's 128x256x256 forward; on a 2-core CPU the
      whole forward takes 0.44x the reference's time, fp32 outputs within about 3e-6
      (`benchmarks/dcformer.py`). It uses only plain
      matrix products and contiguous convolutions, any batch size.
    - "channels_last" (CUDA default; opt-in on CPU): the whole network in NDHWC so that the
      cuDNN / oneDNN convolutions need no transposes. For single volumes only: with torch 2.13's
      CPU build, channels-last 3-D convolutions corrupted the heap and aborted the process
      ("free(): invalid next size") for batches of 2 or more, and the test suite saw it again, hence
      not the CPU default.
    - "reference": contiguous NCDHW op for op, as the reference implementation runs
      (``memory_format = "contiguous"`` or the environment variable); also every training forward,
      since the fused path is for inference only.
    """
    import os

    preference = os.environ.get(LAYOUT_ENV, "").strip().lower() or preference
    if preference == "contiguous":
        return "reference"
    if preference == "channels_last" or device.type == "cuda":
        return "channels_last"
    return "fused" if device.type == "cpu" else "reference"


def feature_map_to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W, D) -> (B, D*H*W, C), depth-major: token index = d*(H*W) + h*W + w."""
    batch, channels = feature_map.shape[:2]
    return feature_map.permute(0, 4, 2, 3, 1).reshape(batch, -1, channels)


class DCFormer(nn.Module):
    """DCFormer image encoder returning the token sequences of all five stages.

    ``forward(images)`` takes ``(B, in_channels, D, H, W)`` and returns a list of five ``(B, N_i, C_i)``
    tensors (stem, s1..s4). The VLM uses the last two (s3, s4); SigLIP mean-pools the last.
    """

    def __init__(self, config: Optional[DCFormerConfig] = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = DCFormerConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a DCFormerConfig or keyword arguments, not both")
        self.config = config
        self.encoder = DCFormerEncoder(config)
        #: "auto" (by device, see `execution_for`), "channels_last" or "contiguous" (the reference).
        self.memory_format = "auto"

    @property
    def hidden_sizes(self) -> Tuple[int, ...]:
        return self.config.channels

    def _check_input(self, images: torch.Tensor) -> None:
        expected = "(batch, channel=%d, depth, height, width), i.e. (B, C, z, y, x)" % self.config.in_channels
        if images.ndim != 5:
            raise ValueError(f"DCFormer expects a 5-D tensor {expected}; got shape {tuple(images.shape)}")
        if images.shape[1] != self.config.in_channels:
            raise ValueError(
                f"DCFormer expects {self.config.in_channels} channel(s) on axis 1 of {expected}; got shape "
                f"{tuple(images.shape)} (channels-last input? use tensor.movedim(-1, 1))"
            )
        size = self.config.expected_input_size
        if size is not None and tuple(images.shape[2:]) != tuple(size):
            raise ValueError(
                f"DCFormer expects spatial size (D, H, W) = {tuple(size)} in layout {expected}; got "
                f"{tuple(images.shape[2:])}. A permuted volume runs but gives wrong features."
            )

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        self._check_input(images)
        depth_last = images.permute(0, 1, 3, 4, 2)  # (B, C, D, H, W) -> (B, C, H, W, D)
        execution = execution_for(images.device, self.memory_format)
        if torch.is_grad_enabled() or self.encoder.s0.training:
            execution = "reference"
        if execution == "channels_last" and images.shape[0] == 1:
            depth_last = depth_last.contiguous(memory_format=torch.channels_last_3d)
        return [feature_map_to_tokens(m) for m in self.encoder(depth_last, fused=execution == "fused")]


def stage_token_counts(input_size: Sequence[int]) -> List[int]:
    """Tokens per stage for a (D, H, W) input: each axis becomes ceil(n / stride), strides 4, 8, ... 64."""
    counts = []
    for stride in (4, 8, 16, 32, 64):
        n = 1
        for dim in input_size:
            n *= -(-int(dim) // stride)
        counts.append(n)
    return counts
