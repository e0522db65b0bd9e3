"""SigLIP-style 3D image / report dual encoder (the reference's ``DEC_CLIP``, ``model_type="dec_clip"``).

A DCFormer embeds the volume (mean of the stage-4 tokens), a Hugging Face text encoder embeds the
report (its [CLS] token, or a masked mean), and two linear projections map both into one space where
cosine similarity ranks reports against volumes. Parameter names match the published
``DCFormer_SigLIP`` checkpoint (``vision_encoder.*``, ``language_encoder.*``, ``mm_vision_proj.*``,
``mm_language_proj.*``, ``t_prime``, ``bias``), so it loads with ``from_pretrained`` as is.

The published config only names its text encoder (``medicalai/ClinicalBERT``). To build the model
offline we keep the text encoder's own config in ``text_config``; when it is missing we fall back to
ClinicalBERT's DistilBERT hyper-parameters, which is what the published weights need.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration import PUBLISHED_REFERENCE_INPUT_SIZE
from .dcformer import DCFormer, DCFormerBlock, DCFormerConfig

# ClinicalBERT (medicalai/ClinicalBERT) is a multilingual DistilBERT; these are its published sizes.
CLINICALBERT_TEXT_CONFIG: Dict[str, Any] = {
    "model_type": "distilbert",
    "vocab_size": 119547,
    "dim": 768,
    "n_layers": 6,
    "n_heads": 12,
    "hidden_dim": 3072,
    "max_position_embeddings": 512,
    "activation": "gelu",
    "dropout": 0.1,
    "attention_dropout": 0.1,
}


class SigLIPConfig(PretrainedConfig):
    """Configuration of :class:`SigLIPModel`; reads the published ``dec_clip`` config.json unchanged.

    Fields that only described the reference's training run (``loss_type``, ``gather_loss``, ``dim``,
    ``depth``, ``input_size`` ...) are kept so a saved config round-trips, but do not change the model.
    """

    model_type = "dec_clip"

    def __init__(
        self,
        language_model_name_or_path: str = "medicalai/ClinicalBERT",
        vision_encoder: str = "dcformer",
        vision_variant: str = "small",
        vision_stem: str = "decomposed",
        hidden_size: int = 768,
        t_prime: float = math.log(1 / 0.07),
        bias: float = 0.0,
        text_config: Optional[Union[Dict[str, Any], PretrainedConfig]] = None,
        text_pooling: str = "cls",
        input_size: Tuple[int, int, int] = PUBLISHED_REFERENCE_INPUT_SIZE,
        dim: int = 768,
        depth: int = 12,
        mlp_depth: int = 2,
        loss_type: str = "sigmoid",
        gather_loss: bool = True,
        local_loss: bool = False,
        efficient_loss: bool = False,
        **kwargs: Any,
    ) -> None:
        if vision_encoder != "dcformer":
            raise ValueError(f"only the 'dcformer' vision encoder is supported, got {vision_encoder!r}")
        if text_pooling not in ("cls", "mean"):
            raise ValueError(f"text_pooling must be 'cls' or 'mean', got {text_pooling!r}")
        if isinstance(text_config, PretrainedConfig):
            text_config = text_config.to_dict()
        self.language_model_name_or_path = language_model_name_or_path
        self.vision_encoder = vision_encoder
        self.vision_variant = vision_variant
        self.vision_stem = vision_stem  # DCFormer's stem: the one the vision stage trained
        self.hidden_size = hidden_size
        self.t_prime = float(t_prime)
        self.bias = float(bias)
        self.text_config = dict(text_config) if text_config is not None else None
        self.text_pooling = text_pooling
        self.input_size = list(input_size)
        self.dim = dim
        self.depth = depth
        self.mlp_depth = mlp_depth
        self.loss_type = loss_type
        self.gather_loss = gather_loss
        self.local_loss = local_loss
        self.efficient_loss = efficient_loss
        super().__init__(**kwargs)

    def build_text_config(self) -> PretrainedConfig:
        """The text encoder's HF config, built offline from ``text_config`` (ClinicalBERT if unset)."""
        values = dict(self.text_config or CLINICALBERT_TEXT_CONFIG)
        model_type = values.pop("model_type")
        return AutoConfig.for_model(model_type, **values)


def gather_features(image_features: torch.Tensor, text_features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """All-gather both feature sets across ranks, keeping the autograd graph; identity without dist.

    ``torch.distributed.nn.functional.all_gather`` sums the gradients of every rank's copy of the
    global loss back onto the local features, so after DDP averages parameter gradients over ranks the
    update equals one process training on the whole global batch.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return image_features, text_features
    if torch.distributed.get_world_size() == 1:
        return image_features, text_features
    from torch.distributed.nn.functional import all_gather

    # Deprecated in recent torch in favour of the private `_functional_collectives`; it is still the
    # public autograd-aware gather and works with gloo on CPU as with NCCL.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(image_features), dim=0), torch.cat(all_gather(text_features), dim=0)


def pairwise_logits(
    image_features: torch.Tensor, text_features: torch.Tensor, t_prime: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Symmetrised SigLIP logits ``(L + L^T) / 2`` with ``L = I T^T exp(t') + b`` (rows: images)."""
    logits = image_features @ text_features.t() * torch.exp(t_prime) + bias
    return (logits + logits.t()) / 2


def sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    t_prime: torch.Tensor,
    bias: torch.Tensor,
    return_logits: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """SigLIP pairwise sigmoid loss over the global batch, as in the reference's distributed path.

    ``loss = -sum(logsigmoid(labels * logits)) / B_global`` with labels ``+1`` on matching pairs and
    ``-1`` elsewhere. The reference's *non-distributed* path used ``t'`` without ``exp`` and did not
    divide by the batch size; that bug is deliberately not reproduced, so one process and N processes
    give the same loss for the same global batch.
    """
    image_all, text_all = gather_features(image_features, text_features)
    logits = pairwise_logits(image_all, text_all, t_prime, bias)
    labels = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1
    loss = -F.logsigmoid(labels * logits).sum() / logits.shape[0]
    return (loss, logits) if return_logits else loss


@dataclass
class SigLIPOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    image_features: Optional[torch.Tensor] = None
    text_features: Optional[torch.Tensor] = None


class SigLIPModel(PreTrainedModel):
    """Dual encoder for text-to-volume retrieval; also the stage-1 pre-training model of Med3DVLM.

    ``language_encoder`` may be passed in (e.g. a locally stored pretrained ``AutoModel``); the config's
    ``text_config`` is then updated from it so that a saved model rebuilds without a hub download.
    """

    config_class = SigLIPConfig
    main_input_name = "images"

    def __init__(self, config: SigLIPConfig, language_encoder: Optional[PreTrainedModel] = None) -> None:
        super().__init__(config)
        if language_encoder is None:
            language_encoder = AutoModel.from_config(config.build_text_config())
        else:
            config.text_config = language_encoder.config.to_dict()
        self.vision_encoder = DCFormer(DCFormerConfig(variant=config.vision_variant, stem=config.vision_stem))
        self.language_encoder = language_encoder
        # DistilBERT calls its width `dim`; HF maps `hidden_size` onto it, so this works for both families.
        text_width = language_encoder.config.hidden_size
        self.mm_vision_proj = nn.Linear(self.vision_encoder.hidden_sizes[-1], config.hidden_size)
        self.mm_language_proj = nn.Linear(text_width, config.hidden_size)
        self.t_prime = nn.Parameter(torch.tensor(config.t_prime))
        self.bias = nn.Parameter(torch.tensor(config.bias))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch default init for the vision side and projections (how the reference trained from scratch);
        # torch.nn.init calls are guarded by transformers so loaded weights are left alone.
        if module is self:
            nn.init.constant_(self.t_prime, self.config.t_prime)
            nn.init.constant_(self.bias, self.config.bias)
        elif isinstance(module, DCFormerBlock):
            nn.init.constant_(module.scale, self.vision_encoder.config.layer_scale_init)
        elif isinstance(module, (nn.Linear, nn.Conv3d, nn.LayerNorm)):
            module.reset_parameters()
        elif isinstance(module, nn.BatchNorm3d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            nn.init.zeros_(module.running_mean)
            nn.init.ones_(module.running_var)
            nn.init.zeros_(module.num_batches_tracked)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings of ``(B, 1, D, H, W)`` volumes in [0, 1]."""
        last_stage = self.vision_encoder(images)[-1]
        return F.normalize(self.mm_vision_proj(last_stage.mean(dim=1)), dim=-1)

    def pool_text(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One vector per report from the text encoder, before the projection into the joint space.

        Split from `project_text` so that training with a frozen text encoder can compute it once per
        report instead of once per step.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.language_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.config.text_pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mm_language_proj(pooled), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """L2-normalised embeddings of tokenised reports."""
        return self.project_text(self.pool_text(input_ids, attention_mask))

    def forward(
        self,
        images: torch.Tensor,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        return_loss: bool = True,
        text_pooled: Optional[torch.Tensor] = None,
        **kwargs: Any,
    ) -> SigLIPOutput:
        """Loss and symmetrised logits over the (globally gathered) batch; extra collator keys are ignored.

        ``text_pooled`` (from `pool_text`) replaces ``input_ids`` when the text encoder is frozen.
        """
        image_features = self.encode_image(images)
        if text_pooled is not None:
            text_features = self.project_text(text_pooled)
        elif input_ids is not None:
            text_features = self.encode_text(input_ids, attention_mask)
        else:
            raise ValueError("SigLIPModel needs input_ids or text_pooled")
        if return_loss:
            loss, logits = sigmoid_loss(image_features, text_features, self.t_prime, self.bias, return_logits=True)
        else:
            loss, logits = None, pairwise_logits(image_features, text_features, self.t_prime, self.bias)
        return SigLIPOutput(loss=loss, logits=logits, image_features=image_features, text_features=text_features)


def register_auto_classes() -> None:
    """Let ``AutoConfig`` / ``AutoModel`` open published ``dec_clip`` folders without remote code."""
    AutoConfig.register(SigLIPConfig.model_type, SigLIPConfig, exist_ok=True)
    AutoModel.register(SigLIPConfig, SigLIPModel, exist_ok=True)


register_auto_classes()
