"""The training stages run by `python -m training.run` (vision, siglip, projector, finetune, merge, eval)."""
