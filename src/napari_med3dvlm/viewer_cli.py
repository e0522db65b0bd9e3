"""``napari-med3dvlm view`` (napari with the phantom sample and every dock open) and
``napari-med3dvlm demo --headless --out DIR`` (the same, unattended: a report and a screenshot).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

PLUGIN = "napari-med3dvlm"
DOCKS = ("Volume", "Report", "Chat", "Retrieval", "Settings")
DEMO_QUESTION = "Which organ shows an abnormality?"


def register(subparsers) -> None:
    from napari_med3dvlm.inference.cli import add_model_options

    view = subparsers.add_parser("view", help="open napari with the phantom sample (or PATHs) and all docks")
    view.add_argument("paths", nargs="*", metavar="PATH", help="volumes to open instead of the phantom sample")
    add_model_options(view)
    view.set_defaults(func=run_view)

    demo = subparsers.add_parser(
        "demo", help="run the docks on the phantom sample and save a report and a screenshot"
    )
    demo.add_argument("--headless", action="store_true", help="do not show the window (needs an X server, e.g. Xvfb)")
    demo.add_argument("--out", type=Path, required=True, help="folder for report.md, report.json, screenshot.png")
    demo.add_argument("--question", default=DEMO_QUESTION, help="a question for the Chat dock")
    demo.add_argument("--front", choices=("report", "chat"), default="report",
                      help="the dock in front for the screenshot")
    demo.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each generation")
    demo.add_argument("--dock-images", type=Path, help="also save each dock as dock_<name>.png in this folder")
    add_model_options(demo)
    demo.set_defaults(func=run_demo)


def open_viewer(paths=(), show: bool = True):
    """A viewer with the given volumes (default: the phantom sample) and our docks; returns
    (viewer, {dock name: widget})."""
    import napari

    viewer = napari.Viewer(title="Med3DVLM", show=show)
    viewer.window.resize(1500, 950)
    if paths:
        viewer.open(list(paths), plugin=PLUGIN)
    else:
        viewer.open_sample(PLUGIN, "phantom_ct")
    docks = {}
    for name in DOCKS:
        try:
            _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=name in ("Chat", "Retrieval", "Settings"))
        except Exception as err:  # noqa: BLE001 - one broken dock must not stop the others
            print(f"warning: the {name} dock could not be opened: {err}", file=sys.stderr)
            continue
        docks[name] = widget
    return viewer, docks


def run_view(args) -> int:
    import napari

    from napari_med3dvlm.inference.cli import engine_from_args

    engine_from_args(args)
    open_viewer(args.paths, show=True)
    napari.run()
    return 0


def _wait(runner, timeout_s: float) -> bool:
    runner.wait(int(timeout_s * 1000))
    return not runner.running


def run_demo(args) -> int:
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        print(
            "error: napari needs an X server even when headless; run e.g. "
            "`xvfb-run -a napari-med3dvlm demo --headless --out DIR`",
            file=sys.stderr,
        )
        return 2
    from napari_med3dvlm.inference.cli import engine_from_args

    engine_from_args(args)
    viewer, docks = open_viewer(show=not args.headless)
    try:
        return _demo(viewer, docks, args)
    finally:
        viewer.close()


def _demo(viewer, docks, args) -> int:
    from qtpy.QtCore import QCoreApplication

    report = docks.get("Report")
    if report is None:
        print("error: the Report dock is not available", file=sys.stderr)
        return 1
    volume = docks.get("Volume")
    if volume is not None:  # show what the model sees, as a user would tick the box
        volume.model_view.setChecked(True)
        if volume.model_input_worker is not None:
            _wait_worker(volume.model_input_worker, args.timeout)
    failures = []
    report.runner.failed.connect(failures.append)
    report.generate()
    if not _wait(report.runner, args.timeout):
        report.runner.stop()
        _wait(report.runner, 10)
    if failures or report.record is None:
        print(f"error: {failures[0] if failures else 'no report was generated'}", file=sys.stderr)
        return 1
    md, js = report.export(args.out / "report.md")
    print(f"report: {md} and {js.name} ({report.record.duration_s:.1f} s)")

    chat = docks.get("Chat")
    if chat is not None and args.question:
        chat.runner.failed.connect(failures.append)
        chat.send(args.question)
        _wait(chat.runner, args.timeout)
    _raise_dock(chat if args.front == "chat" and chat is not None else report)  # in front for the screenshot
    for _ in range(5):
        QCoreApplication.processEvents()
    shot = args.out / "screenshot.png"
    viewer.screenshot(str(shot), canvas_only=False)
    print(f"screenshot: {shot}")
    if args.dock_images:
        args.dock_images.mkdir(parents=True, exist_ok=True)
        for name, widget in docks.items():
            path = args.dock_images / f"dock_{name.lower()}.png"
            widget.grab().save(str(path))
            print(f"dock image: {path}")
    return 0


def _raise_dock(widget) -> None:
    from qtpy.QtWidgets import QDockWidget

    parent = widget.parent()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parent()
    if parent is not None:
        parent.raise_()


def _wait_worker(worker, timeout_s: float) -> None:
    from qtpy.QtCore import QCoreApplication, QElapsedTimer

    done = []
    worker.finished.connect(lambda: done.append(True))
    timer = QElapsedTimer()
    timer.start()
    while not done and timer.elapsed() < timeout_s * 1000:
        QCoreApplication.processEvents()
        time.sleep(0.005)
    QCoreApplication.processEvents()
