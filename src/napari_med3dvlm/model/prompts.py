"""The one prompt builder, used by inference and training alike. It lives beside the model (as a
processor does) because the format is part of what the weights were trained on.

Med3DVLM was trained without a chat template or system prompt: the prompt is ``"<im_patch>" * N``
followed directly by the text (docs/reference-model.md, "Prompt format"). Questions start with a
space, report templates do not. The model overwrites positions 1..N with image features, so the first text token
is never seen; keeping the exact training format matters more than "fixing" that.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

IMAGE_TOKEN = "<im_patch>"
CHOICE_LETTERS = ("A", "B", "C", "D")

#: Requests for a free-text report; one is picked per training sample so the model does not
#: depend on a single wording. The first is used at inference time.
REPORT_TEMPLATES: tuple[str, ...] = (
    "Write a radiology report describing the findings in this scan.",
    "Describe the findings of this 3D medical image.",
    "What are the findings in this volume? Write them as a report.",
    "Summarise what this scan shows.",
    "Provide a findings section for this study.",
    "Report the abnormalities visible in this image volume.",
    "Generate a report for this medical scan.",
    "Please describe this image as a radiologist would.",
    "Give a concise description of the findings in this scan.",
    "Write the findings for this examination.",
    "What does this 3D image show? Describe it in detail.",
    "Produce a findings paragraph for this volume.",
    "Describe the anatomy and any lesions seen in this scan.",
    "List the findings you can see in this study.",
    "Compose a short radiology report for this image.",
    "Interpret this scan and describe your findings.",
    "Please write a caption summarising the findings of this study.",
    "Describe what is normal and what is abnormal in this volume.",
    "Write a report on the key observations in this scan.",
    "How would you describe this medical image?",
    "Give the imaging findings for this case.",
    "Review this volume and report what you see.",
    "Explain the main findings visible in this scan.",
    "Create a findings report based on this image.",
    "Describe this study, including any pathology.",
    "Write down the radiological findings of this scan.",
    "What can be observed in this 3D scan? Write a report.",
    "Provide a detailed description of this imaging study.",
    "Summarise the relevant findings for the referring clinician.",
    "Describe the organs and abnormalities visible here.",
    "Please report on this scan.",
    "Characterise the findings in this medical volume.",
    "Give a radiology-style description of this image.",
    "Describe any masses, fluid or other findings in this scan.",
    "Report the findings of this imaging examination in prose.",
    "What are the notable features of this scan?",
    "Draft the findings section of a report for this volume.",
    "Describe this scan for a radiology report.",
    "Write an interpretation of this 3D study.",
    "Caption this scan with its findings.",
    "Examine the image and describe the findings.",
    "Tell me what this scan shows, as a short report.",
)


def image_prefix(proj_out_num: int) -> str:
    """The placeholder tokens whose positions receive the image features."""
    if proj_out_num < 1:
        raise ValueError("proj_out_num must be positive")
    return IMAGE_TOKEN * int(proj_out_num)


def report_text(template: str | None = None, rng: random.Random | None = None) -> str:
    """A report request: the given template, a random one when ``rng`` is given, else the first."""
    if template is not None:
        return template
    if rng is not None:
        return rng.choice(REPORT_TEMPLATES)
    return REPORT_TEMPLATES[0]


def open_question_text(question: str) -> str:
    return " " + question.strip()


def closed_question_text(question: str, choices: Sequence[str]) -> str:
    """``" {Q} Choices: A. .. B. .. C. .. D. .."`` (the closed-VQA training format)."""
    if len(choices) != len(CHOICE_LETTERS):
        raise ValueError(f"closed questions need exactly {len(CHOICE_LETTERS)} choices, got {len(choices)}")
    listed = " ".join(f"{letter}. {str(text).strip()}" for letter, text in zip(CHOICE_LETTERS, choices))
    return f"{open_question_text(question)} Choices: {listed}"


def question_text(question: str, choices: Sequence[str] | None = None) -> str:
    return closed_question_text(question, choices) if choices else open_question_text(question)


def closed_answer_text(letter: str, answer: str) -> str:
    """How closed answers are written (``"B. Liver"``); graders look for ``"B."``."""
    letter = letter.strip().upper()
    if letter not in CHOICE_LETTERS:
        raise ValueError(f"answer letter must be one of {CHOICE_LETTERS}, got {letter!r}")
    return f"{letter}. {str(answer).strip()}"


def choice_continuation_ids(tokenizer, choice: str):
    """Token ids of a choice as it follows an open question (``" " + answer``, as in training)."""
    import torch

    ids = tokenizer(" " + str(choice).strip(), add_special_tokens=False)["input_ids"]
    return torch.as_tensor(ids, dtype=torch.long)


def report_prompt(proj_out_num: int, template: str | None = None, rng: random.Random | None = None) -> str:
    return image_prefix(proj_out_num) + report_text(template, rng)


def question_prompt(proj_out_num: int, question: str, choices: Sequence[str] | None = None) -> str:
    return image_prefix(proj_out_num) + question_text(question, choices)


# Training pairs: (prompt, target). The loss is computed on the target only.


def caption_example(proj_out_num: int, report: str, rng: random.Random | None = None) -> tuple[str, str]:
    return report_prompt(proj_out_num, rng=rng or random.Random()), " " + report.strip()


def open_vqa_example(proj_out_num: int, question: str, answer: str) -> tuple[str, str]:
    return question_prompt(proj_out_num, question), " " + str(answer).strip()


def closed_vqa_example(
    proj_out_num: int, question: str, choices: Sequence[str], letter: str, answer: str
) -> tuple[str, str]:
    return question_prompt(proj_out_num, question, choices), " " + closed_answer_text(letter, answer)


# Multi-turn chat: the model was trained single-turn, so earlier turns are plain text after the
# image tokens, oldest dropped first when the context would overflow.


@dataclass
class Turn:
    question: str
    answer: str = ""
    choices: tuple[str, ...] | None = None

    def text(self) -> str:
        asked = question_text(self.question, self.choices)
        return asked + (" " + self.answer.strip() if self.answer.strip() else "")


def _word_count(text: str) -> int:
    # A rough stand-in for a tokenizer: sub-word tokenizers give at least one token per word.
    return len(text.split())


def chat_prompt(
    proj_out_num: int,
    history: Sequence[Turn],
    question: str,
    choices: Sequence[str] | None = None,
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int = 512,
    reserve: int = 0,
) -> tuple[str, int]:
    """Prompt for a new question after ``history``; returns it and how many old turns were kept.

    ``max_tokens`` is the context limit, ``reserve`` the room left for the answer. The newest
    question is always kept, even when it alone is too long (the model truncates it).
    """
    count = count_tokens or _word_count
    current = question_text(question, tuple(choices) if choices else None)
    budget = max_tokens - proj_out_num - reserve - count(current)
    kept: list[str] = []
    for turn in reversed(history):
        text = turn.text()
        cost = count(text)
        if cost > budget:
            break
        kept.insert(0, text)
        budget -= cost
    return image_prefix(proj_out_num) + "".join(kept) + current, len(kept)
