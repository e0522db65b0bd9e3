"""Med3DVLM: DCFormer image tokens -> projector -> a causal LLM from transformers.

The image splice is *positional*, exactly as in the reference ``prepare_inputs_for_multimodal``:
the prompt starts with ``proj_out_num`` ``<im_patch>`` tokens, and the embeddings at positions
``1 .. proj_out_num`` are replaced by the projected image features::

    inputs_embeds = cat(emb[:, :1], image_features, emb[:, 1 + N:])

Position 0 keeps the embedding of the first ``<im_patch>`` and, because the N ``<im_patch>`` ids only
cover positions ``0 .. N-1``, the first text token (position N) is overwritten too. The published
model was trained with this off-by-one, so we reproduce it rather than locating image tokens by id.
The sequence length never changes, so labels and attention masks line up with ``input_ids``.
"""

from __future__ import annotations

import threading

import torch
from torch import nn
from transformers import AutoModelForCausalLM, StoppingCriteria

from .configuration import Med3DVLMConfig
from .dcformer import DCFormer, DCFormerConfig


def build_vision_tower(config: Med3DVLMConfig) -> DCFormer:
    if config.vision_tower != "dcformer":
        raise ValueError(f"Unsupported vision tower {config.vision_tower!r}; only 'dcformer' is implemented.")
    return DCFormer(DCFormerConfig(variant=config.vision_variant, stem=config.vision_stem,
                                   expected_input_size=config.image_size))


def build_mm_projector(config: Med3DVLMConfig) -> nn.Module:
    from .projector import build_projector

    if config.mm_projector_type == "mixer":
        return build_projector(
            "mixer",
            low_input_size=config.low_input_size,
            high_input_size=config.high_input_size,
            low_output_size=config.low_output_size,
            high_output_size=config.high_output_size,
            output_dim=config.hidden_size,
            mlp_depth=config.mm_mlp_depth,
        )
    # "mlp" / "linear" act on one stage's tokens, whose width is mm_hidden_size.
    return build_projector(
        config.mm_projector_type,
        input_size=config.mm_hidden_size,
        output_size=config.hidden_size,
        mlp_depth=config.mm_mlp_depth,
    )


class StopOnEvent(StoppingCriteria):
    """Stops ``generate`` as soon as ``event`` is set (a Cancel button in another thread)."""

    def __init__(self, event: threading.Event | None = None):
        self.event = event or threading.Event()

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Med3DVLMForCausalLM(nn.Module):
    """The Med3DVLM model: ``vision_tower`` (DCFormer), ``mm_projector`` and ``language_model``.

    A plain ``nn.Module`` wrapper (not a ``PreTrainedModel``): checkpoints go through
    ``model/loading.py``, which maps our parameter names to the published ones, and generation is
    delegated to the wrapped transformers model.
    """

    def __init__(self, config: Med3DVLMConfig, language_model: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.vision_tower = build_vision_tower(config)
        self.mm_projector = build_mm_projector(config)
        if language_model is None:
            language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.language_model = language_model

    # ------------------------------------------------------------------ image features
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the image path (projector); the LLM is cast alongside when loading."""
        return self.mm_projector_dtype

    @property
    def mm_projector_dtype(self) -> torch.dtype:
        return next(self.mm_projector.parameters()).dtype

    def select_image_tokens(self, hidden_states: list[torch.Tensor]):
        """Stage outputs the projector sees: ``vision_select_layer=-2`` means the last two (s3, s4)."""
        layer = self.config.vision_select_layer
        if self.config.vision_select_feature not in ("cls_patch", "patch"):
            raise ValueError(f"Unknown vision_select_feature {self.config.vision_select_feature!r}")
        if self.config.mm_projector_type == "mixer":
            return hidden_states[layer:] if layer < 0 else hidden_states[layer : layer + 2]
        return hidden_states[layer]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) in [0, 1] -> (B, proj_out_num, hidden_size) embeddings for the LLM."""
        images = images.to(device=self.device, dtype=next(self.vision_tower.parameters()).dtype)
        selected = self.select_image_tokens(self.vision_tower(images))
        dtype = self.mm_projector_dtype
        if isinstance(selected, (list, tuple)):
            return self.mm_projector(*[t.to(dtype) for t in selected])
        return self.mm_projector(selected.to(dtype))

    # ------------------------------------------------------------------ the splice
    def prepare_inputs_embeds(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None):
        """Token embeddings with positions ``1..N`` replaced by ``image_features`` (see module doc)."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        if image_features is None:
            return embeds
        n_image = image_features.shape[1]
        if input_ids.shape[1] < n_image + 1:
            raise ValueError(
                f"The prompt has {input_ids.shape[1]} tokens but {n_image} image features need at least "
                f"{n_image + 1}: start it with {n_image} x {self.config.image_token!r}."
            )
        if image_features.shape[0] != embeds.shape[0]:
            if image_features.shape[0] != 1:
                raise ValueError("image_features and input_ids have different batch sizes")
            image_features = image_features.expand(embeds.shape[0], -1, -1)
        image_features = image_features.to(device=embeds.device, dtype=embeds.dtype)
        return torch.cat([embeds[:, :1], image_features, embeds[:, 1 + n_image :]], dim=1)

    def _embeds(self, input_ids, images, image_features):
        if images is not None and image_features is not None:
            raise ValueError("Pass images or image_features, not both.")
        if images is not None:
            image_features = self.encode_images(images)
        return self.prepare_inputs_embeds(input_ids, image_features)

    # ------------------------------------------------------------------ forward / generate
    def forward(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ):
        """Returns the language model's ``CausalLMOutput`` (``loss`` when ``labels`` are given)."""
        inputs_embeds = self._embeds(input_ids, images, image_features)
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs
        )

    @torch.no_grad()
    def score_continuations(
        self,
        input_ids: torch.Tensor,
        continuations: list[torch.Tensor],
        images: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Summed log-probability of each continuation (1-D token ids) after the prompt ``input_ids`` (1, L).

        Closed questions can be answered by ranking their choices this way instead of generating a
        letter: a small model that names the right answer to the open question often still picks
        the wrong letter when it has to map its answer onto a position in a list.
        """
        if images is not None:
            image_features = self.encode_images(images)
        prompt = input_ids[0]
        rows = [torch.cat([prompt, c.to(prompt.device)]) for c in continuations]
        batch = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=0)  # right padding, masked
        mask = nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True, padding_value=0)
        if image_features is not None and image_features.shape[0] == 1:
            image_features = image_features.expand(len(rows), -1, -1)
        logits = self(input_ids=batch, image_features=image_features, attention_mask=mask).logits.float()
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
        start = len(prompt)
        scores = []
        for i, cont in enumerate(continuations):
            targets = batch[i, start : start + len(cont)].unsqueeze(-1)
            scores.append(log_probs[i, start - 1 : start - 1 + len(cont)].gather(-1, targets).sum())
        return torch.stack(scores)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        streamer=None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Generate from the spliced prompt; returns only the NEW token ids (B, T_new).

        Works with a ``TextIteratorStreamer`` (``skip_prompt`` makes no difference: the prompt is
        passed as embeddings) and ``stopping_criteria`` such as ``StopOnEvent`` for cancelling.
        """
        inputs_embeds = self._embeds(input_ids, images, image_features)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        generation_config = self.language_model.generation_config
        if generate_kwargs.get("pad_token_id") is None and generation_config.pad_token_id is None:
            eos = generate_kwargs.get("eos_token_id", generation_config.eos_token_id)
            if isinstance(eos, (list, tuple)):
                eos = eos[0] if eos else None
            if eos is not None:
                generate_kwargs["pad_token_id"] = eos
        return self.language_model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, streamer=streamer, **generate_kwargs
        )
