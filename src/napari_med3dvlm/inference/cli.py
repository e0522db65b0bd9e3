"""``napari-med3dvlm report`` and ``napari-med3dvlm ask``: the Report and Chat docks, headless.

Both go through the shared engine and the same task generators as the docks, so a report written
here is the one the Report dock would show for the same volume and settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_med3dvlm.io import Volume, VolumeReadError
from napari_med3dvlm.settings import CLOSED_ANSWER_MODES, DEVICES, DTYPES, LLM_BACKENDS, load_settings

from .backend import get_engine
from .engine import InferenceEngine, ModelUnavailableError
from .pacs_cli import (
    add_dicomweb_options,
    chat_sr_outputs,
    check_sr_source,
    load_input,
    report_inputs,
    sr_outputs,
)
from .tasks import Conversation, stream_report


def register(subparsers) -> None:
    report = subparsers.add_parser(
        "report",
        help="write a Markdown and JSON report for each volume",
        description="Generate a findings report for each volume (NIfTI file, DICOM file or folder).",
    )
    report.add_argument("paths", nargs="*", metavar="PATH", help="NIfTI files, DICOM files or folders")
    report.add_argument("--out", required=True, type=Path, help="folder for the .md and .json reports")
    report.add_argument(
        "--relevance", action="store_true",
        help="also write where the model looked for each sentence: one NIfTI map per sentence beside the "
        "report (report-NN-where-KK.nii.gz, with a NIfTI input's own shape, affine and voxel order) and "
        "report-NN-where.json naming them",
    )
    _add_common(report)
    add_dicomweb_options(report)  # --dicomweb URL --study UID, --sr, --stow
    report.set_defaults(func=run_report, quick_exit=True)

    ask = subparsers.add_parser(
        "ask",
        help="answer a question about a volume",
        description="Ask a question about a volume; the answer streams to standard output.",
    )
    ask.add_argument("path", metavar="PATH", nargs="?",
                     help="a NIfTI file, DICOM file or folder (or --dicomweb URL --study UID)")
    ask.add_argument("question", help="the question, in quotes")
    ask.add_argument(
        "--choices", nargs=4, metavar=("A", "B", "C", "D"), help="answer options: a closed question"
    )
    ask.add_argument("--out", type=Path, help="folder for the DICOM SR of --sr")
    _add_common(ask)
    add_dicomweb_options(ask, "answer")  # --dicomweb URL --study UID, --sr, --stow
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
    group.add_argument(
        "--llm", choices=LLM_BACKENDS,
        help="where the language model runs: in this process, or in vLLM (batches requests; docs/vllm.md)",
    )
    group.add_argument("--vllm-url", metavar="URL", help="a vLLM server already running (default: start one)")
    return group


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = add_model_options(parser)
    group.add_argument(
        "--window", type=window_arg,
        help="CT display window for the model: a preset name or CENTER,WIDTH (default: soft tissue)",
    )
    group.add_argument("--series", type=int, help="only this series (0-based) of a multi-series folder")
    add_server_options(parser)


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """--server and --token: run against `napari-med3dvlm serve` instead of a model in this process."""
    group = parser.add_argument_group("backend server (default: the saved settings)")
    group.add_argument("--server", metavar="URL",
                       help="a `napari-med3dvlm serve` address, e.g. http://127.0.0.1:8765 "
                       "(default: $NAPARI_MED3DVLM_SERVER, else Settings > Backend)")
    group.add_argument("--token", help="the server's token (default: $NAPARI_MED3DVLM_TOKEN, else the stored one)")


def engine_from_args(args, local: bool = False):
    """The shared engine with the command-line overrides applied (not saved). ``local``: always the
    model in this process (the server itself), whatever the saved backend says."""
    import os

    from napari_med3dvlm.settings import SERVER_ENV

    from .backend import use_settings

    settings = get_engine().settings if not local else load_settings()
    overrides = {
        "model_source": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "closed_answer": getattr(args, "closed_answer", None),
        "scope_warnings": getattr(args, "scope_warnings", None),
        "llm": getattr(args, "llm", None) or ("vllm" if getattr(args, "vllm_url", None) else None),
        "vllm_url": getattr(args, "vllm_url", None),
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    server = None if local else (getattr(args, "server", None) or
                                 (os.environ.get(SERVER_ENV) if hasattr(args, "server") else None))
    if local:
        overrides["backend"] = "local"
    elif server:
        overrides.update(backend="server", server_url=server)
    if overrides:
        settings = settings.updated(**overrides)
    return use_settings(settings, token=getattr(args, "token", None) or None)


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


def load_volumes(path, series: int | str | None = None) -> list[Volume]:
    """Volumes at ``path``: every series of a DICOM folder, or only the one --series picks (the io
    reader's `select_series` rule; only that series is decoded)."""
    from napari_med3dvlm.io import read_volume, read_volumes

    from napari_med3dvlm.io import VolumeReadError
    from napari_med3dvlm.io.preprocess import thin_volume_message

    volumes = read_volumes(path) if series is None else [read_volume(path, series)]
    name = Path(path).name if Path(path).is_file() else "the folder"
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
    if engine.settings.llm == "vllm" and getattr(engine.settings, "backend", "local") == "local":
        return _run_report_batch(args, engine)
    window = parse_window(args.window)
    count = failed = 0
    inputs = report_inputs(args)  # the paths, and the --dicomweb study
    try:
        for number, path in enumerate(inputs, start=1):
            try:
                volumes = load_input(path, args, load_volumes)
            except (VolumeReadError, OSError) as err:  # one unreadable input: the others still run
                prefix = f"input {number}: " if len(inputs) > 1 else ""
                print(f"error: {prefix}{one_line(err)}", file=sys.stderr)
                failed += 1
                continue
            for index, volume in enumerate(volumes):
                volume = _with_window(volume, window)
                label = f"input {number} series {index + 1}"
                stream = stream_report(engine, volume, on_scope=_scope_printer(engine, label))
                failed += _write_outputs(args, engine, _drain(stream), volume, number, index)
                count += 1
    except ModelUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return model_error_code(err)
    print(f"{count} report(s) written to {args.out}")
    return 2 if failed else 0


def _write_outputs(args, engine, record, volume, number: int, index: int) -> int:
    """Everything ``report`` writes for one volume's record (Markdown, JSON, relevance maps, SR) and
    its line on stdout; returns the number of outputs that failed (an SR not stored)."""
    label = f"input {number} series {index + 1}"
    stem = f"report-{number:02d}" + (f"-{index + 1:02d}" if index else "")
    md, js = record.write(args.out, stem)
    if args.relevance:
        from .relevance import write_sentence_maps

        maps = write_sentence_maps(engine, volume, volume, record.text, args.out, stem, record.request)
        print(f"{label}: {len(maps)} relevance map(s), {stem}-where.json")
    print(f"{label}: {md.name}, {js.name} ({record.duration_s:.1f} s)")
    return sr_outputs(args, record, volume, stem, label) if args.sr or args.stow else 0


def _run_report_batch(args, engine) -> int:
    """``report --llm vllm``: the volumes are encoded one after another and every report is requested
    as soon as its volume is encoded, all at once, so that vLLM batches them; the files and lines are
    the sequential run's, in the same order."""
    from concurrent.futures import ThreadPoolExecutor

    window = parse_window(args.window)
    count = failed = 0
    jobs = []
    inputs = report_inputs(args)  # the paths, and the --dicomweb study
    for number, path in enumerate(inputs, start=1):
        try:
            volumes = load_input(path, args, load_volumes)
        except (VolumeReadError, OSError) as err:
            prefix = f"input {number}: " if len(inputs) > 1 else ""
            print(f"error: {prefix}{one_line(err)}", file=sys.stderr)
            failed += 1
            continue
        jobs += [(number, index, _with_window(volume, window)) for index, volume in enumerate(volumes)]
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(64, len(jobs))), thread_name_prefix="report") as pool:
            futures = []
            for number, index, volume in jobs:
                try:
                    engine.encode(volume)  # in order, here; the reports already requested generate meanwhile
                except ValueError:
                    pass  # the report's own task says why (and reports the scope)
                printer = _scope_printer(engine, f"input {number} series {index + 1}")
                futures.append(pool.submit(_drain, stream_report(engine, volume, on_scope=printer)))
            for (number, index, volume), future in zip(jobs, futures):
                failed += _write_outputs(args, engine, future.result(), volume, number, index)
                count += 1
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
    (source,) = report_inputs(args)  # the path or the --dicomweb study
    volumes = load_input(source, args, load_volumes)
    if len(volumes) > 1:
        print(f"note: {len(volumes)} series found, using the first (pick one with --series)", file=sys.stderr)
    volume = _with_window(volumes[0], parse_window(args.window))
    try:
        check_sr_source(args, volume)  # before the model runs: --sr needs --out and a DICOM source
    except ValueError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    conversation = Conversation()
    try:
        started = False
        answer = conversation.stream_answer(
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
    if args.sr or args.stow:
        return 2 if chat_sr_outputs(args, volume, conversation.turns, engine.model_id) else 0
    return 0


def model_error_code(err: ModelUnavailableError) -> int:
    """2 when the model folder itself is damaged or unsafe (bad input) or the backend server fails, 1 when no
    model is available."""
    from napari_med3dvlm.model.files import ModelLoadError

    from napari_med3dvlm.errors import ServerError

    return 2 if isinstance(err, ServerError) or isinstance(err.__cause__, ModelLoadError) else 1


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
