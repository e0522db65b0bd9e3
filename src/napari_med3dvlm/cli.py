"""`napari-med3dvlm` command line: one sub-command per widget, so everything the docks do also runs
headless (batch jobs, servers, CI).

Each capability registers its own sub-commands (``register(subparsers)``) so this file stays a
dispatcher.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys
import warnings

#: Modules that contribute sub-commands through a ``register(subparsers)`` function.
COMMAND_MODULES = (
    "napari_med3dvlm.inference.cli",  # report, ask
    "napari_med3dvlm.inference.llm_cli",  # export-llm (the language model as a plain folder, for vLLM)
    "napari_med3dvlm.retrieval.cli",  # index, search
    "napari_med3dvlm.viewer_cli",  # view (napari with the sample and docks), demo
    "napari_med3dvlm.server.cli",  # serve (the model over HTTP)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-med3dvlm", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _exit.quick = bool(getattr(args, "quick_exit", False))
    from napari_med3dvlm.io import VolumeReadError

    # Bad input (an unreadable volume, a missing path) is one line on stderr and exit code 2, never a
    # traceback; warnings are one line each too.
    input_errors = (VolumeReadError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
    with warnings.catch_warnings():
        warnings.simplefilter("default", UserWarning)  # each distinct message once per run
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except input_errors as err:
            print(f"error: {_one_line(err)}", file=sys.stderr)
            return 2


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {_one_line(message)}", file=sys.stderr if file is None else file, flush=True)


class _exit:
    """The process's last step after a headless command (report, ask, index, search: the commands
    that set ``quick_exit``). Once its outputs are written and every other exit handler has run,
    the interpreter's own teardown only frees memory and unloads torch's and transformers'
    thousands of modules, which takes a noticeable part of a cold ``report``. The handler
    below is registered when this module is imported, before torch or any other library, so it runs
    last (exit handlers run in reverse order); it flushes the standard streams and leaves with the
    command's exit code. Only `entry` (the console script, ``python -m napari_med3dvlm``) arms it:
    a program or a test that calls `main` keeps the normal exit."""

    quick = False
    code: int | None = None


@atexit.register
def _leave_without_teardown() -> None:
    if _exit.code is None or not _exit.quick:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to flush
            pass
    os._exit(_exit.code)


def entry() -> None:
    """The console script: `main`, then exit with its code (see `_exit`)."""
    code = main()
    _exit.code = code
    sys.exit(code)


if __name__ == "__main__":
    entry()
