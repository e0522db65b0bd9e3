"""Stage 1b (optional): locked-image tuning of the SigLIP text side, for text-to-volume retrieval.

The image tower SigLIP trained (or the one of the embedded folder a round continues from) is locked:
every training volume is embedded once, and only the text side learns against those fixed vectors:
LoRA adapters in the text encoder's attention, its projection into the joint space, and the loss's
temperature and bias. A frozen text encoder with one linear projection is what limits phantom
retrieval (docs/retrieval.md); tuning it costs one text-encoder pass per report and step, no 3D
convolution. The result is a full SigLIP folder that merge ships and eval scores instead of the
SigLIP stage's. The image embeddings, and with them every index already built, stay valid.

Runs when the preset has a ``lit`` section (``python -m training.run lit --preset demo``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from napari_med3dvlm.model.siglip import sigmoid_loss
from napari_med3dvlm.model.sources import SIGLIP_SUBFOLDER

from ..config import stage_config
from ..data import sources
from ..loop import train
from .common import count_parameters, keep_in_eval_mode, loop_config, save_result, stage_dir, trainable_parameters
from .siglip import add_text_adapters, trained_siglip

#: Defaults of the stage's own options (``lit.lora_r`` ...).
LORA_R, LORA_ALPHA = 8, 16
#: Test reports scored at each learning-curve point (the eval stage's retrieval size).
CURVE_PAIRS = 100


class Reports(Dataset):
    """The training reports, each with the row of its volume's locked embedding."""

    def __init__(self, texts: list[str]):
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:
        return {"row": index, "text": self.texts[index]}


class ReportCollator:
    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, items) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer([item["text"] for item in items], max_length=self.max_length, truncation=True,
                                padding="longest", return_tensors="pt")
        return {"rows": torch.tensor([item["row"] for item in items]), "input_ids": tokens["input_ids"],
                "attention_mask": tokens["attention_mask"]}


class LockedImageText(nn.Module):
    """A SigLIP whose image side is a fixed table of embeddings (one row per training volume)."""

    def __init__(self, siglip, image_features: torch.Tensor):
        super().__init__()
        self.siglip = siglip
        keep_in_eval_mode(siglip.vision_encoder)
        siglip.mm_vision_proj.requires_grad_(False)
        self.register_buffer("image_features", image_features, persistent=False)  # rebuilt on resume

    def forward(self, rows, input_ids, attention_mask):
        text = self.siglip.encode_text(input_ids, attention_mask)
        return sigmoid_loss(self.image_features[rows], text, self.siglip.t_prime, self.siglip.bias, return_logits=True)


def lit_loss(model, batch):
    loss, logits = model(**batch)
    with torch.no_grad():
        hits = (logits.argmax(dim=1) == torch.arange(logits.shape[0], device=logits.device)).float()
    return loss, {"batch_r1": hits.mean().item()}


@torch.no_grad()
def embed_volumes(siglip, dataset, count: int | None = None, batch_size: int = 16) -> torch.Tensor:
    """Locked image embeddings of the first ``count`` volumes of a caption dataset (all by default)."""
    count = len(dataset) if count is None else min(count, len(dataset))
    siglip.eval()
    out = []
    for start in range(0, count, batch_size):
        images = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, count))])
        out.append(siglip.encode_image(images.float()))
    return torch.cat(out)


def retrieval_curve(tokenizer, test, max_length: int, pairs: int = CURVE_PAIRS):
    """``evaluate(model)`` for the loop: text->volume and volume->text R@1/R@5 over the first ``pairs``
    test reports and their locked volume embeddings."""
    from ..evaluation import retrieval_metrics

    images = None

    @torch.no_grad()
    def evaluate(model) -> dict:
        nonlocal images
        siglip = model.siglip
        if images is None:
            images = embed_volumes(siglip, test, pairs)
        siglip.language_encoder.eval()
        texts = [test.text(i) for i in range(len(images))]
        feats = []
        for start in range(0, len(texts), 32):
            tokens = tokenizer(texts[start : start + 32], max_length=max_length, truncation=True,
                               padding="longest", return_tensors="pt")
            feats.append(siglip.encode_text(tokens["input_ids"], tokens["attention_mask"]))
        scores = retrieval_metrics(images.cpu().numpy(), torch.cat(feats).cpu().numpy(), sizes=[len(images)],
                                   ks=(1, 5))
        return {k: round(v, 4) for k, v in next(iter(scores.values())).items()}

    return evaluate


def run(config: dict) -> dict:
    start = trained_siglip(config, after_lit=False)
    if start is None:
        raise FileNotFoundError("lit: no SigLIP to start from: run the siglip stage first (or set finetune.init_from "
                                "to an embedded model folder with a siglip/ subfolder)")
    siglip, tokenizer, source = start
    stage = stage_config(config, "lit")
    cfg = loop_config(config, "lit")
    max_length = int(config["model"].get("text_max_length", 512))
    captions = sources.caption_dataset(config, "train")
    image_features = embed_volumes(siglip, captions)
    print(f"[lit] {len(image_features)} training volumes embedded by the locked image tower of {source}")
    siglip.requires_grad_(True)
    add_text_adapters(siglip, int(stage.get("lora_r", LORA_R)), int(stage.get("lora_alpha", LORA_ALPHA)))
    model = LockedImageText(siglip, image_features)
    test = sources.caption_dataset(config, "test")
    evaluate = retrieval_curve(tokenizer, test, max_length) if len(test) else None
    model, state, accelerator = train(
        name="lit",
        model=model,
        dataset=Reports([captions.text(i) for i in range(len(captions))]),
        collate_fn=ReportCollator(tokenizer, max_length),
        compute_loss=lit_loss,
        cfg=cfg,
        output_dir=stage_dir(config, "lit"),
        evaluate=evaluate,
        evaluate_every=int(stage.get("evaluate_every", 0)) if evaluate else 0,
    )
    trainable = trainable_parameters(model)
    info = {
        "steps": state.global_step,
        "minutes": round(state.elapsed_s / 60, 2),
        "samples": len(captions),
        "trainable_parameters": count_parameters(trainable.values()),
        "image_tower": source,
    }
    if evaluate is not None:
        info["retrieval_test"] = evaluate(model)
    if accelerator.is_main_process:
        tensors = {name.removeprefix("siglip."): p for name, p in trainable.items()}
        folder = save_result(config, "lit", tensors, info)
        siglip = model.siglip
        siglip.language_encoder = siglip.language_encoder.merge_and_unload()
        siglip.save_pretrained(str(folder / SIGLIP_SUBFOLDER))
        tokenizer.save_pretrained(str(folder / SIGLIP_SUBFOLDER))
    return info
