"""DCFormer plus the vision stage's training-only heads.

The module and parameter names are the keys of every vision checkpoint and resume file
(``encoder.*``, ``lateral.*``, ``dense.*``, ``token_head.*``, ``token_kind.*``, ``pooled_head.*``, and
``technique_head.*`` when the stage trains it):
renaming one makes earlier runs impossible to resume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_med3dvlm.model.dcformer import DCFormer, DCFormerConfig, feature_map_to_tokens

from ..data.dense import FINDING_LABELS, NUM_KINDS, NUM_ORGANS, TECHNIQUE


class DenseVisionModel(nn.Module):
    """DCFormer and its heads:

    * a light feature-pyramid head on stages s1-s4 predicts, on the stride-8 grid, which finding kinds
      are present in each cell and which organ it shows;
    * a head on the flattened s3 and s4 tokens (what the VLM's projector reads) predicts the case's
      set of (kind, site) findings, and one on the mean-pooled s4 tokens (what SigLIP reads) too;
    * a 1x1 head on each s3 token names the kinds in its block;
    * with ``technique``, a head on the same flattened s3 and s4 tokens names the case's region, contrast
      phase and plane (what every report states first, and what lesion targets alone do not teach).
    """

    def __init__(self, variant: str, input_size, width: int = 64, layer_scale_init: float | None = None,
                 stem: str = "decomposed", technique: bool = False):
        super().__init__()
        self.encoder = DCFormer(DCFormerConfig(variant=variant, stem=stem))
        if layer_scale_init is not None:  # a larger start lets the residual branches learn sooner
            for block in self.encoder.modules():
                if hasattr(block, "scale") and isinstance(block.scale, nn.Parameter):
                    nn.init.constant_(block.scale, layer_scale_init)
        channels = self.encoder.hidden_sizes
        self.lateral = nn.ModuleList(nn.Conv3d(c, width, 1) for c in channels[1:])
        self.dense = nn.Sequential(
            nn.GELU(), nn.Conv3d(width, width, 3, padding=1), nn.GELU(), nn.Conv3d(width, NUM_KINDS + NUM_ORGANS, 1)
        )
        d, h, w = input_size
        n3 = -(-d // 32) * -(-h // 32) * -(-w // 32)
        n4 = -(-d // 64) * -(-h // 64) * -(-w // 64)
        self.token_head = nn.Linear(n3 * channels[3] + n4 * channels[4], len(FINDING_LABELS))
        # per s3 token: which finding kinds lie in its block (located targets on what the projector reads)
        self.token_kind = nn.Conv3d(channels[3], NUM_KINDS, 1)
        self.pooled_head = nn.Linear(channels[4], len(FINDING_LABELS))
        if technique:
            self.technique_head = nn.Linear(n3 * channels[3] + n4 * channels[4], sum(len(v) for _, v in TECHNIQUE))

    def stage_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's stage maps, depth-last (B, C, H, W, D), for (B, 1, D, H, W) images."""
        return self.encoder.encoder(images.permute(0, 1, 3, 4, 2))

    def dense_logits(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """(B, NUM_KINDS + NUM_ORGANS, h, w, d) on the s1 grid: the feature pyramid and its head."""
        grid = maps[1].shape[2:]
        pyramid = sum(
            F.interpolate(lat(m), size=grid, mode="trilinear", align_corners=False) if m.shape[2:] != grid else lat(m)
            for lat, m in zip(self.lateral, maps[1:])
        )
        return self.dense(pyramid)

    def kind_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The dense kind logits alone (any input size: the set heads need the configured one)."""
        return self.dense_logits(self.stage_maps(images))[:, :NUM_KINDS]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.encoder._check_input(images)
        maps = self.stage_maps(images)
        dense = self.dense_logits(maps)
        s3, s4 = feature_map_to_tokens(maps[3]), feature_map_to_tokens(maps[4])
        tokens = torch.cat([s3.flatten(1), s4.flatten(1)], dim=1)
        out = {"technique": self.technique_head(tokens)} if hasattr(self, "technique_head") else {}
        return {
            **out,
            "kind": dense[:, :NUM_KINDS],
            "organ": dense[:, NUM_KINDS:],
            "findings": self.token_head(tokens),
            "token_kind": self.token_kind(maps[3]),
            "findings_pooled": self.pooled_head(s4.mean(dim=1)),
        }
