"""``napari-med3dvlm report`` and ``napari-med3dvlm ask``: the Report and Chat docks, headless.

Both go through the shared engine and the same task generators as the docks, so a report written
here is the one the Report dock would show for the same volume and settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_med3dvlm.io import Volume, VolumeReadError
from napari_med3dvlm.settings import CLOSED_ANSWER_MODES, DEVICES, DTYPES

from .engine import InferenceEngine, ModelUnavailableError, get_engine
from .tasks import Conversation, stream_report


def register(subparsers) -> None:
    report = subparsers.add_parser(
        "report",
        help="write a Markdown and JSON report for each volume",
        description="Generate a findings report for each volume (NIfTI file, DICOM file or folder).",
    )
    report.add_argument("paths", nargs="+", metavar="PATH", help="NIfTI files, DICOM files or folders")
    report.add_argument("--out", required=True, type=Path, help="folder for the .md and .json reports")
    report.add_argument(
        "--relevance", action="store_true",
        help="also write where the model looked for each sentence: one NIfTI map per sentence beside the "
        "report (report-NN-where-KK.nii.gz, the source's affine) and report-NN-where.json naming them",
    )
    _add_common(report)
    report.set_defaults(func=run_report, quick_exit=True)

    ask = subparsers.add_parser(
        "ask",
        help="answer a question about a volume",
        description="Ask a question about a volume; the answer streams to standard output.",
    )
    ask.add_argument("path", metavar="PATH", help="a NIfTI file, DICOM file or folder")
    ask.add_argument("question", help="the question, in quotes")
    ask.add_argument(
        "--choices", nargs=4, metavar=("A", "B", "C", "D"), help="answer options: a closed question"
    )
    _add_common(ask)
    ask.set_defaults(func=run_ask, quick_exit=True)


def add_model_options(parser: argparse.ArgumentParser):
    """The model and generation options every generating command shares (read by engine_from_args)."""
    group = parser.add_argument_group("model and generation (default: the saved settings)")
    group.add_argument("--model", help="'embedded', a local model folder, or a hub id")
    group.add_argument("--device", choices=DEVICES)
    group.add_argument("--dtype", choices=DTYPES)
    group.add_argument("--max-new-tokens", type=int)
    group.add_argument("--temperature", type=float, help="0 = greedy (deterministic)")
    group.add_argument(
        "--closed-answer", choices=CLOSED_ANSWER_MODES,
        help="closed questions: rank the four choices (score) or let the model write the letter (generate)",
    )
    group.add_argument(
        "--no-scope-warning", dest="scope_warnings", action="store_false", default=None,
        help="do not print the 'outside what this model knows' warning (exports still record the check)",
    )
    return group


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = add_model_options(parser)
    group.add_argument(
        "--window", type=window_arg,
        help="CT display window for the model: a preset name or CENTER,WIDTH (default: soft tissue)",
    )
    group.add_argument("--series", type=int, help="only this series (0-based) of a multi-series folder")


def engine_from_args(args) -> InferenceEngine:
    """The shared engine with the command-line overrides applied (not saved)."""
    engine = get_engine()
    overrides = {
        "model_source": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "closed_answer": getattr(args, "closed_answer", None),
        "scope_warnings": getattr(args, "scope_warnings", None),
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        engine.update_settings(engine.settings.updated(**overrides))
    return engine


def window_arg(text: str):
    """argparse type of --window: a preset name or CENTER,WIDTH with a positive width."""
    from napari_med3dvlm.io import WINDOW_PRESETS

    try:
        window = parse_window(text)
    except ValueError:
        window = None
    if isinstance(window, str) and window in WINDOW_PRESETS:
        return window
    if isinstance(window, tuple) and window[1] > 0:
        return window
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a preset ({', '.join(WINDOW_PRESETS)}) nor CENTER,WIDTH with a positive width"
    )


def parse_window(text):
    if text is None or not isinstance(text, str):
        return text
    if "," in text:
        center, width = (float(v) for v in text.split(",", 1))
        return (center, width)
    return text


def load_volumes(path, series: int | None = None) -> list[Volume]:
    """Volumes at ``path`` (every series of a DICOM folder unless one is picked)."""
    from napari_med3dvlm.io import read_volumes

    from napari_med3dvlm.io import VolumeReadError
    from napari_med3dvlm.io.preprocess import thin_volume_message

    volumes = read_volumes(path)
    name = Path(path).name if Path(path).is_file() else "the folder"
    if series is not None:
        if not 0 <= series < len(volumes):
            raise VolumeReadError(f"{name}: --series {series} is out of range ({len(volumes)} series)")
        volumes = [volumes[series]]
    for volume in volumes:
        if min(volume.shape) < 2:  # the reader shows it; the model cannot describe it
            raise VolumeReadError(thin_volume_message(volume.shape, name))
    return volumes


def _with_window(volume: Volume, window) -> Volume:
    """The volume with the model's window set from --window (the file's window otherwise)."""
    if window is not None:
        volume.window = window
    return volume


def run_report(args) -> int:
    engine = engine_from_args(args)
    window = parse_window(args.window)
    count = failed = 0
    try:
        for number, path in enumerate(args.paths, start=1):
            try:
                volumes = load_volumes(path, args.series)
            except (VolumeReadError, OSError) as err:  # one unreadable input: the others still run
                prefix = f"input {number}: " if len(args.paths) > 1 else ""
                print(f"error: {prefix}{one_line(err)}", file=sys.stderr)
                failed += 1
                continue
            for index, volume in enumerate(volumes):
                volume = _with_window(volume, window)
                label = f"input {number} series {index + 1}"
                stream = stream_report(engine, volume, on_scope=_scope_printer(engine, label))
                record = _drain(stream)
                stem = f"report-{number:02d}" + (f"-{index + 1:02d}" if index else "")
                md, js = record.write(args.out, stem)
                if args.relevance:
                    from .relevance import write_sentence_maps

                    maps = write_sentence_maps(engine, volume, volume, record.text, args.out, stem, record.request)
                    print(f"input {number} series {index + 1}: {len(maps)} relevance map(s), {stem}-where.json")
                count += 1
                print(f"input {number} series {index + 1}: {md.name}, {js.name} ({record.duration_s:.1f} s)")
    except ModelUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return model_error_code(err)
    print(f"{count} report(s) written to {args.out}")
    return 2 if failed else 0


def one_line(err: BaseException) -> str:
    """An error as one line for standard error: its message, or its type where it has none."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def run_ask(args) -> int:
    engine = engine_from_args(args)
    volumes = load_volumes(args.path, args.series)
    if len(volumes) > 1:
        print(f"note: {len(volumes)} series found, using the first (pick one with --series)", file=sys.stderr)
    volume = _with_window(volumes[0], parse_window(args.window))
    try:
        started = False
        answer = Conversation().stream_answer(
            engine, volume, args.question, args.choices, on_scope=_scope_printer(engine, "input")
        )
        for piece in answer:
            if not started:  # answers often begin with a space or newline
                piece = piece.lstrip()
                started = bool(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except ModelUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return model_error_code(err)
    sys.stdout.write("\n")
    return 0


def model_error_code(err: ModelUnavailableError) -> int:
    """2 when the model folder itself is damaged or unsafe (bad input), 1 when no model is available."""
    from napari_med3dvlm.model.files import ModelLoadError

    return 2 if isinstance(err.__cause__, ModelLoadError) else 1


def _scope_printer(engine: InferenceEngine, label: str):
    """An ``on_scope`` callback printing the warning to stderr (unless turned off in the settings)."""

    def show(result) -> None:
        if result.flagged and engine.settings.scope_warnings:
            print(f"warning: {label}: {result.warning()}", file=sys.stderr, flush=True)

    return show


def _drain(generator):
    """Run a task generator to the end and return its result."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value
