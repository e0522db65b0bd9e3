"""The language-modelling loss of the VLM stages (projector, fine-tuning).

Only the answer tokens of a sample carry a label (the prompt, the image positions and the padding are
``-100``), yet a causal LM asked for its loss computes the output head, hidden size x vocabulary
(576 x 49,152 for SmolLM2), at every position and then throws most of it away. Here the decoder runs
as usual and the head runs only at the positions whose next token is labelled: the same loss and the
same gradients (mean cross-entropy over the labelled tokens, logits in fp32), in 0.83-0.85 of the
step time over the demo's task mix on two CPU cores (`benchmarks/lm_loss.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


def labelled_token_loss(language_model, inputs_embeds, attention_mask, labels) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions of ``labels`` (``-100`` elsewhere)."""
    causal_lm = language_model.get_base_model() if hasattr(language_model, "get_base_model") else language_model
    hidden = causal_lm.get_decoder()(
        inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    if not bool(keep.any()):  # every answer cut off by max_length: a zero that keeps the graph
        return hidden.sum() * 0.0
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep])


class LabelledLossVLM(nn.Module):
    """The VLM as the LLM stages train it: a batch in, its loss out.

    One module, so that distributed training (DDP) sees the projector and adapters in ``forward``. It
    takes volumes (``images``) or the frozen encoder's cached stage tokens (``vision_low``,
    ``vision_high``; `training.data.features`)."""

    def __init__(self, vlm: nn.Module):
        super().__init__()
        self.vlm = vlm
        self.lesion_share = None  # the optional auxiliary loss on the projector (`lesion_share`)
        self.lesion_share_weight = 0.0
        self.last_lesion_share = None

    def attach_lesion_share(self, loss: nn.Module, weight: float) -> None:
        """Add ``weight`` x ``loss(projector)`` to every training batch's loss (`training.stages.lesion_share`)."""
        self.lesion_share, self.lesion_share_weight = loss, float(weight)

    def forward(self, input_ids, attention_mask, labels, images=None, vision_low=None, vision_high=None):
        if vision_low is not None:
            features = self.vlm.mm_projector(vision_low, vision_high)
        elif images is not None:
            features = self.vlm.encode_images(images)
        else:
            features = None
        inputs_embeds = self.vlm.prepare_inputs_embeds(input_ids, features)
        loss = labelled_token_loss(self.vlm.language_model, inputs_embeds, attention_mask, labels)
        if self.lesion_share is not None and self.training:
            auxiliary = self.lesion_share(self.vlm.mm_projector)
            self.last_lesion_share = auxiliary.detach()
            loss = loss + self.lesion_share_weight * auxiliary
        return loss
