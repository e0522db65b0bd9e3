"""Evaluation results as JSON and as Markdown tables."""

from __future__ import annotations

import json
from pathlib import Path

from .vqa import CATEGORIES

_CATEGORY_ORDER = ["overall"] + list(CATEGORIES.values())


def _pct(x) -> str:
    return "" if x is None else f"{100.0 * float(x):.1f}"


def to_markdown(results: dict) -> str:
    parts: list[str] = []
    if "retrieval" in results:
        rows = results["retrieval"]
        keys = list(next(iter(rows.values())).keys())
        parts += ["### Retrieval (R@k, %)", "", "| N | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        parts += [f"| {n.removeprefix('N=')} | " + " | ".join(_pct(v[k]) for k in keys) + " |" for n, v in rows.items()]
        parts.append("")
    if "report" in results:
        parts += ["### Report generation (%, per sample then averaged)", "",
                  "| run | BLEU-1 | ROUGE-1 | METEOR | BERTScore F1 | n |", "|---|---|---|---|---|---|"]
        for run, m in results["report"].items():
            parts.append(f"| {run} | {_pct(m.get('bleu1'))} | {_pct(m.get('rouge1'))} | {_pct(m.get('meteor'))} | "
                         f"{_pct(m.get('bertscore'))} | {m.get('n', '')} |")
        parts.append("")
    closed_runs = dict(results.get("vqa_closed", {}))
    if "answer_prior" in results:
        closed_runs["answer prior"] = {"accuracy": results["answer_prior"]["closed_accuracy"]}
    if closed_runs:
        parts += ["### Closed VQA accuracy (%)", "", "| run | " + " | ".join(_CATEGORY_ORDER) + " |",
                  "|---" * (len(_CATEGORY_ORDER) + 1) + "|"]
        for run, m in closed_runs.items():
            acc = m["accuracy"]
            parts.append(f"| {run} | " + " | ".join(_pct(acc.get(c)) for c in _CATEGORY_ORDER) + " |")
        parts.append("")
    if "vqa_open" in results:
        parts += ["### Open VQA (METEOR / BERTScore F1, %)", "", "| run | " + " | ".join(_CATEGORY_ORDER) + " |",
                  "|---" * (len(_CATEGORY_ORDER) + 1) + "|"]
        for run, m in results["vqa_open"].items():
            cells = []
            for c in _CATEGORY_ORDER:
                v = m.get(c)
                cells.append("" if v is None else f"{_pct(v.get('meteor'))} / {_pct(v.get('bertscore'))}")
            parts.append(f"| {run} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def write_results(results: dict, out_dir, stem: str = "evaluation") -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    md_path.write_text(to_markdown(results) + "\n", encoding="utf-8")
    return json_path, md_path
