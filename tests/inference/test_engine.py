import threading
import time

import pytest
import torch

from napari_med3dvlm.inference import InferenceEngine, InferenceSettings, ModelUnavailableError
from napari_med3dvlm.model.prompts import report_prompt
from napari_med3dvlm.inference.tasks import Conversation, stream_report
from napari_med3dvlm.io import Volume


def slow_down(engine, seconds=0.01):
    """Make every decoding step take at least ``seconds`` so a stop can land mid-generation."""
    model, _ = engine.load()
    return model.language_model.register_forward_pre_hook(lambda *args: time.sleep(seconds))


def test_model_is_loaded_once_and_shared(engine):
    first = engine.load()
    assert engine.load()[0] is first[0]
    assert engine.proj_out_num == 12 and engine.image_size == (32, 64, 64)


def test_features_are_encoded_once_per_volume_and_window(engine, ct_volume):
    first = engine.encode(Volume(ct_volume))
    assert first.features.shape == (1, 12, 32)
    assert engine.encode(Volume(ct_volume.copy())) is first  # same content, same features
    lung = engine.encode(Volume(ct_volume, window="lung"))
    assert lung.signature != first.signature
    changed = ct_volume.copy()
    changed[::2, ::2, ::2] += 100
    assert engine.encode(Volume(changed)).signature != first.signature
    assert len(engine.features) == 3


def test_stream_yields_text_and_matches_generate(engine, ct_volume):
    encoded = engine.encode(Volume(ct_volume))
    prompt = report_prompt(engine.proj_out_num)
    pieces = list(engine.stream(prompt, encoded))
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert engine.generate(prompt, encoded) == "".join(pieces)  # greedy: reproducible


def test_cancel_stops_promptly_and_keeps_partial_text(engine, ct_volume):
    hook = slow_down(engine)
    try:
        cancel = threading.Event()
        settings = engine.settings.updated(max_new_tokens=200)
        stream = stream_report(engine, Volume(ct_volume), settings, cancel)
        pieces = [next(stream), next(stream)]
        cancel.set()
        start = time.perf_counter()
        try:
            while True:
                pieces.append(next(stream))
        except StopIteration as stop:
            record = stop.value
        assert time.perf_counter() - start < 1.0
    finally:
        hook.remove()
    assert record.stopped and record.text == "".join(pieces).strip() and record.text
    assert len(engine.load()[1](record.text)["input_ids"]) < 150


def test_conversation_carries_history_into_the_next_prompt(engine, ct_volume):
    chat = Conversation()
    volume = Volume(ct_volume)
    first = "".join(chat.stream_answer(engine, volume, "Which organ is largest?"))
    second = "".join(chat.stream_answer(engine, volume, "Is there a cyst?", ["yes", "no", "maybe", "unclear"]))
    assert [t.question for t in chat.turns] == ["Which organ is largest?", "Is there a cyst?"]
    assert chat.turns[0].answer == first.strip() and chat.turns[1].answer == second.strip()
    prompt = chat.prompt(engine, "And the liver?")
    assert " Which organ is largest?" in prompt and "Choices: A. yes B. no C. maybe D. unclear" in prompt


def test_missing_folder_and_offline_hub_id_say_which_setting_to_change(config_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="Model source"):
        InferenceEngine(InferenceSettings(model_source=str(config_dir / "nowhere"))).load()
    with pytest.raises(ModelUnavailableError, match="Settings") as info:
        InferenceEngine(InferenceSettings(model_source="someone/some-model")).load()
    assert "offline" in str(info.value)


def test_out_of_memory_while_loading_suggests_a_smaller_dtype(tiny_model_dir):
    def loader(source, device, dtype):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 30 GiB")

    engine = InferenceEngine(InferenceSettings(model_source=str(tiny_model_dir), device="cpu"), loader=loader)
    with pytest.raises(ModelUnavailableError, match="does not fit.*bfloat16"):
        engine.load()


def test_changing_the_model_source_reloads(engine, tiny_model_dir):
    model, _ = engine.load()
    engine.update_settings(engine.settings.updated(max_new_tokens=5))
    assert engine.load()[0] is model  # generation settings do not reload
    engine.update_settings(engine.settings.updated(dtype="bfloat16"))
    assert not engine.is_loaded
    assert next(engine.load()[0].parameters()).dtype == torch.bfloat16


def test_report_records_where_the_model_actually_ran(engine, ct_volume):
    engine.update_settings(engine.settings.updated(device="auto", dtype="auto"))
    stream = stream_report(engine, Volume(ct_volume))
    while True:
        try:
            next(stream)
        except StopIteration as stop:
            record = stop.value
            break
    assert not record.stopped  # finished by itself, not by a stop request
    assert record.settings["device"] == "cpu" and record.settings["dtype"] == "float32"
    assert record.to_dict()["generation"]["device"] == "cpu"


def test_closing_the_stream_early_stops_generation(engine, ct_volume):
    hook = slow_down(engine)
    try:
        cancel = threading.Event()
        encoded = engine.encode(Volume(ct_volume))
        stream = engine.stream(report_prompt(engine.proj_out_num), encoded, engine.settings.updated(max_new_tokens=200), cancel)
        next(stream)
        start = time.perf_counter()
        stream.close()
        assert cancel.is_set() and time.perf_counter() - start < 1.0
    finally:
        hook.remove()


def test_cpu_threads_are_given_back_on_unload(engine):
    before = torch.get_num_threads()
    engine.load()
    engine.unload()
    assert torch.get_num_threads() == before


def test_choice_scores_are_the_summed_token_log_probabilities(engine, ct_volume):
    from napari_med3dvlm.model.prompts import choice_continuation_ids, question_prompt

    model, tokenizer = engine.load()
    encoded = engine.encode(Volume(ct_volume))
    prompt = question_prompt(engine.proj_out_num, "Which organ has a cyst?")
    choices = ["liver", "left kidney", "spleen", "head of the pancreas"]
    scores = engine.rank_choices(prompt, choices, encoded)
    prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    for choice, score in zip(choices, scores):  # one unpadded forward pass per choice, by hand
        cont = choice_continuation_ids(tokenizer, choice)
        ids = torch.cat([prompt_ids[0], cont]).unsqueeze(0)
        with torch.no_grad():
            logp = model(input_ids=ids, image_features=encoded.features).logits.float().log_softmax(-1)[0]
        expected = sum(logp[len(prompt_ids[0]) - 1 + i, t].item() for i, t in enumerate(cont.tolist()))
        assert score == pytest.approx(expected, abs=1e-3)


def test_closed_questions_pick_the_best_ranked_choice_or_generate(engine, ct_volume):
    volume = Volume(ct_volume)
    choices = ["liver", "left kidney", "spleen", "head of the pancreas"]
    chat = Conversation()
    answer = "".join(chat.stream_answer(engine, volume, "Which organ has a cyst?", choices))
    scores = engine.rank_choices(Conversation().prompt(engine, "Which organ has a cyst?"), choices, engine.encode(Volume(ct_volume)))
    best = max(range(4), key=scores.__getitem__)
    assert answer == f"{'ABCD'[best]}. {choices[best]}" and chat.turns[-1].choices == tuple(choices)
    generating = engine.settings.updated(closed_answer="generate", max_new_tokens=6)
    free = "".join(Conversation().stream_answer(engine, volume, "Which organ has a cyst?", choices, generating))
    assert isinstance(free, str)
    with pytest.raises(ValueError):
        InferenceSettings(closed_answer="guess")
