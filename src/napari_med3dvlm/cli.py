"""`napari-med3dvlm` command line: one sub-command per widget, so everything the docks do also runs
headless (batch jobs, servers, CI).

Each capability registers its own sub-commands (``register(subparsers)``) so this file stays a
dispatcher.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules that contribute sub-commands through a ``register(subparsers)`` function.
COMMAND_MODULES = (
    "napari_med3dvlm.inference.cli",  # report, ask
    "napari_med3dvlm.retrieval.cli",  # index, search
    "napari_med3dvlm.viewer_cli",  # view (napari with the sample and docks), demo
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
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
