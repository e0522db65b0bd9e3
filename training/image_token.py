"""Train only the embedding rows of tokens added for images, not the whole vocabulary matrix.

Adding ``<im_patch>`` grows the LLM's embedding by one row. Making the whole matrix trainable (as the
reference does) costs optimizer state and checkpoint space for ~50k rows that must not change.
`ImageTokenEmbedding` wraps the frozen embedding and owns just the new rows as a parameter; `merge`
writes them back into a plain ``nn.Embedding`` for saving.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ImageTokenEmbedding(nn.Module):
    """A frozen ``nn.Embedding`` whose rows for ``token_ids`` come from a small trainable parameter."""

    def __init__(self, base: nn.Embedding, token_ids: Sequence[int]):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.register_buffer("token_ids", torch.tensor(list(token_ids), dtype=torch.long), persistent=False)
        self.rows = nn.Parameter(base.weight.detach()[self.token_ids].clone())

    @property
    def weight(self) -> torch.Tensor:
        # transformers reads ``.weight`` (tying, resizing, dtype checks): the frozen full matrix.
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.base(input_ids)
        for row, token_id in enumerate(self.token_ids.tolist()):
            hit = (input_ids == token_id).unsqueeze(-1)
            embeds = torch.where(hit, self.rows[row].to(embeds.dtype), embeds)
        return embeds

    @torch.no_grad()
    def merged(self) -> nn.Embedding:
        """The base embedding with the trained rows written in (shares storage with the base)."""
        self.base.weight[self.token_ids] = self.rows.detach().to(self.base.weight.dtype)
        return self.base


def attach_image_token_rows(language_model: nn.Module, token_ids: Sequence[int]) -> ImageTokenEmbedding:
    """Swap the LLM's input embedding for an `ImageTokenEmbedding` (idempotent)."""
    current = language_model.get_input_embeddings()
    if isinstance(current, ImageTokenEmbedding):
        return current
    wrapped = ImageTokenEmbedding(current, token_ids)
    language_model.set_input_embeddings(wrapped)
    return wrapped


def detach_image_token_rows(language_model: nn.Module) -> None:
    """Write the trained rows back and restore the plain embedding."""
    current = language_model.get_input_embeddings()
    if isinstance(current, ImageTokenEmbedding):
        language_model.set_input_embeddings(current.merged())
