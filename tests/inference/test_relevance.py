"""Relevance maps: spans of generated text attributed to the input volume, mapped back onto the layer."""

import threading

import numpy as np
import torch

from napari_med3dvlm.inference import relevance as R
from napari_med3dvlm.io import Volume, preprocess_volume
from napari_med3dvlm.io.orientation import display_from_plane, plane_view


def _run(task):
    messages = []
    while True:
        try:
            messages.append(next(task))
        except StopIteration as stop:
            return stop.value, messages


def test_sentence_spans_keep_decimals_and_offsets():
    text = "CT abdomen, axial images. A 3.5 cm cyst in the left kidney.  No ascites."
    spans = R.sentence_spans(text)
    assert [text[a:b] for a, b in spans] == [
        "CT abdomen, axial images.", "A 3.5 cm cyst in the left kidney.", "No ascites."]
    assert R.sentence_at(text, text.index("cyst")) == spans[1]
    assert R.short_label("word " * 30, 20).endswith("…") and len(R.short_label("word " * 30, 20)) <= 20


def test_span_tokens_cover_exactly_the_span(engine):
    _, tokenizer = engine.load()
    report = "The liver is enlarged. No free fluid."
    start = report.index("No")
    target = R.report_target(4, report, start, len(report))
    ids, mask = R.span_token_ids(tokenizer, target.prompt, target)
    assert ids.shape[1] == mask.shape[0] and mask.any()
    assert tokenizer.decode(ids[0, mask]).strip() == "No free fluid."
    assert target.text == "No free fluid."


def test_gradient_x_input_points_at_what_the_score_reads():
    """A score that only reads one box of the input: the map's maximum is inside the box."""
    torch.manual_seed(0)
    image = torch.rand(1, 1, 8, 16, 16)
    box = torch.zeros_like(image)
    box[..., 2:5, 9:13, 3:7] = 1.0

    def score_fn(x):  # a "stage map" of two channels: inside the box, outside it; the score reads one
        stage = torch.cat([x * box, x * (1 - box)], dim=1)
        return stage[:, 0].sum() ** 2, [stage]

    for method in R.METHODS:
        out, _ = R.attribute(score_fn, image, method)
        assert out.shape == (8, 16, 16) and float(out.max()) == 1.0 and float(out.min()) >= 0.0
        peak = np.unravel_index(int(out.argmax()), out.shape)
        assert 2 <= peak[0] < 5 and 9 <= peak[1] < 13 and 3 <= peak[2] < 7, method


def test_to_layer_grid_puts_model_voxels_back_where_they_came_from():
    """Map the preprocessed image itself back: it lands on the bright blob of the original layer."""
    display = np.full((20, 40, 36), -1000, dtype=np.int16)
    display[2:18, 5:35, 4:32] = 40  # body
    display[12:16, 8:13, 20:26] = 400  # the blob
    tensor, transform = preprocess_volume(display, "CT", spatial_size=(16, 32, 32), plane="coronal")
    back = R.to_layer_grid(tensor[0, 0].numpy(), transform)
    assert back.shape == display.shape
    assert back[display == -1000].max() <= 0.05  # outside the body crop stays empty
    blob = display == 400
    assert back[blob].mean() > 0.8 and back[(display == 40)].mean() < 0.6
    bright = np.argwhere(back > 0.8).mean(axis=0)  # where the map is bright: the blob's centre
    np.testing.assert_allclose(bright, np.argwhere(blob).mean(axis=0), atol=1.0)
    assert np.array_equal(display_from_plane(plane_view(display, "coronal"), "coronal"), display)


def test_explain_a_report_sentence_on_a_model_folder(engine, ct_volume):
    model, _ = engine.load()
    before = [p.requires_grad for p in model.parameters()]
    volume = Volume(data=ct_volume, spacing=(2.0, 1.0, 1.0), plane="sagittal")
    report = "The liver is enlarged. No free fluid."
    target = R.report_target(engine.proj_out_num, report, 0, report.index(".") + 1)
    result, messages = _run(R.stream_relevance(engine, volume, target))
    assert messages and all(isinstance(m, str) for m in messages)
    assert result.model_map.shape == tuple(model.config.image_size)
    assert result.layer.shape == ct_volume.shape and result.layer.dtype == np.float32
    assert np.isfinite(result.layer).all() and 0.0 <= result.layer.min() and result.layer.max() <= 1.0
    assert result.layer.max() > 0
    assert result.span == "The liver is enlarged." and np.isfinite(result.log_likelihood) and result.n_tokens > 0
    assert [p.requires_grad for p in model.parameters()] == before
    kwargs = R.layer_kwargs(result, (2.0, 1.0, 1.0), (5.0, 0.0, 0.0))
    assert kwargs["scale"] == (2.0, 1.0, 1.0) and kwargs["blending"] == "additive"
    assert "The liver is enlarged." in kwargs["name"]


def test_cancel_before_the_backward_pass_returns_nothing(engine, ct_volume):
    cancel = threading.Event()
    cancel.set()
    target = R.report_target(engine.proj_out_num, "No free fluid.", 0, 14)
    result, _ = _run(R.stream_relevance(engine, Volume(data=ct_volume), target, cancel_event=cancel))
    assert result is None


def test_answer_and_choice_targets(engine):
    from napari_med3dvlm.model.prompts import Turn

    history = [Turn("Which organ?", "The liver.")]
    target = R.answer_target(8, history, "Is there fluid?", "No free fluid.")
    assert target.text == "No free fluid." and target.prompt.endswith("Is there fluid?")
    assert "Which organ?" in target.prompt
    choice = R.choice_target(8, [], "Which organ has a mass?", "Left kidney")
    assert choice.text == "Left kidney" and "Choices" not in choice.prompt
