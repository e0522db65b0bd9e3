import random

import pytest

from napari_med3dvlm.model import prompts


def test_report_prompt_is_image_tokens_then_template_without_space():
    prompt = prompts.report_prompt(4)
    assert prompt == "<im_patch>" * 4 + prompts.REPORT_TEMPLATES[0]
    assert len(set(prompts.REPORT_TEMPLATES)) == len(prompts.REPORT_TEMPLATES) >= 40


def test_training_caption_pairs_draw_varied_templates():
    rng = random.Random(0)
    requests = {prompts.caption_example(2, "Liver normal.", rng)[0] for _ in range(50)}
    assert len(requests) > 10
    assert prompts.caption_example(2, " Liver normal. ", rng)[1] == " Liver normal."


def test_closed_and_open_question_formats():
    closed = prompts.question_prompt(2, "Which organ?", ["liver", "spleen", "kidney", "lung"])
    assert closed == "<im_patch><im_patch> Which organ? Choices: A. liver B. spleen C. kidney D. lung"
    assert prompts.question_prompt(1, " What plane? ") == "<im_patch> What plane?"
    assert prompts.closed_vqa_example(1, "Q?", "abcd", "b", "b")[1] == " B. b"
    with pytest.raises(ValueError):
        prompts.closed_question_text("Q?", ["only", "three", "choices"])


def test_chat_keeps_recent_turns_within_the_context_limit():
    history = [prompts.Turn(f"question {i} " + "word " * 10, f"answer {i}") for i in range(5)]
    prompt, kept = prompts.chat_prompt(8, history, "newest?", max_tokens=8 + 40, reserve=5)
    assert 0 < kept < 5
    assert "question 4" in prompt and "question 0" not in prompt
    assert prompt.startswith("<im_patch>" * 8 + " question") and prompt.endswith(" newest?")
    # the new question is kept even when nothing else fits
    prompt, kept = prompts.chat_prompt(8, history, "newest?", max_tokens=9)
    assert kept == 0 and prompt == "<im_patch>" * 8 + " newest?"
