"""``report --dicomweb URL --study UID [--series UID] [--sr] [--stow]`` (and the same for ``ask``): a
study from a PACS in, the report or the question and answer back to it as a DICOM SR.

The options, how credentials are found (options, then NAPARI_MED3DVLM_DICOMWEB_USER/_PASSWORD/_TOKEN,
then the ones the PACS dialog stored), the DICOMweb input and the SR outputs. Faults are
`DicomWebError`/`DicomSrError`: one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from napari_med3dvlm.io import VolumeReadError
from napari_med3dvlm.io.dicomweb import (
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT_S,
    DicomWebError,
    DicomWebServer,
    check_uid,
    credentials_from_env,
    display_url,
)

from .dicom_sr import DicomSrError, build_report_sr, write_sr


def secret_name(url: str, what: str) -> str:
    """Where the secrets file keeps ``what`` (user, password, token) for one DICOMweb server."""
    return f"dicomweb:{display_url(url)}:{what}"


def stored_credentials(url: str) -> dict:
    from napari_med3dvlm.settings import load_secret

    return {what: load_secret(secret_name(url, what)) or None for what in ("user", "password", "token")}


def save_credentials(url: str, user: str = "", password: str = "", token: str = "") -> None:
    """Remember (or, with empty values, forget) the credentials of one server, in the secrets file."""
    from napari_med3dvlm.settings import save_secret

    for what, value in (("user", user), ("password", password), ("token", token)):
        save_secret(secret_name(url, what), value or "")


def connect(url: str, user=None, password=None, token=None, timeout: float = DEFAULT_TIMEOUT_S) -> DicomWebServer:
    """A server with the first credentials found: given, then environment, then stored."""
    given = {"user": user, "password": password, "token": token}
    for fallback in (credentials_from_env(os.environ), stored_credentials(url) if url else {}):
        if not any(given.values()):
            given = {k: given[k] or fallback.get(k) for k in given}
    return DicomWebServer(url, timeout=timeout, **given)


def series_arg(text: str):
    """--series: a 0-based index (files, or the study's image series in order) or a series UID."""
    text = str(text).strip()
    if text.isdigit() and "." not in text and len(text) < 6:
        return int(text)
    try:
        return check_uid(text, "--series")
    except DicomWebError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_dicomweb_options(parser: argparse.ArgumentParser, what: str = "report") -> None:
    """The DICOMweb source and SR output options; ``what`` ("report" or "answer") names the output."""
    group = parser.add_argument_group("DICOMweb source and DICOM SR output (docs/usage.md#from-a-pacs)")
    group.add_argument("--dicomweb", metavar="URL", help="a DICOMweb root, e.g. http://pacs:8042/dicom-web")
    group.add_argument("--study", metavar="UID", help="the StudyInstanceUID to read from --dicomweb")
    group.add_argument("--dicomweb-user", help="HTTP basic user (default: $NAPARI_MED3DVLM_DICOMWEB_USER, else stored)")
    group.add_argument("--dicomweb-password", help="HTTP basic password (default: $NAPARI_MED3DVLM_DICOMWEB_PASSWORD)")
    group.add_argument("--dicomweb-token", help="bearer token (default: $NAPARI_MED3DVLM_DICOMWEB_TOKEN, else stored)")
    group.add_argument("--dicomweb-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                       help=f"seconds to wait for the server (default {DEFAULT_TIMEOUT_S:g})")
    group.add_argument("--max-download-gb", type=float, default=DEFAULT_MAX_BYTES / 2**30, metavar="GB",
                       help="refuse a retrieval larger than this, before it starts (default %(default)g)")
    sr_help = ("also write each report as a DICOM SR (report-NN.dcm) for a DICOM source" if what == "report" else
               "write the question and the answer as a DICOM SR (chat-NN.dcm, the next free number in --out) "
               "for a DICOM source")
    group.add_argument("--sr", action="store_true", help=sr_help)
    group.add_argument("--stow", action="store_true",
                       help="store the DICOM SR on the --dicomweb server, in the source's study (implies --sr)")
    for action in parser._actions:  # --series also takes a series UID here
        if action.dest == "series":
            action.type = series_arg
            action.help = "one series: its 0-based index or its SeriesInstanceUID"


@dataclass(frozen=True)
class DicomWebInput:
    """The --dicomweb source of a report run (one input among the paths)."""

    url: str
    study: str


def report_inputs(args) -> list:
    """The paths (``ask``: its one path) and, with --dicomweb, the DICOMweb study; raises `DicomWebError`
    for a bad combination."""
    paths = getattr(args, "paths", None)
    if paths is None:  # ask: one optional PATH
        paths = [args.path] if getattr(args, "path", None) else []
        if paths and getattr(args, "dicomweb", None):
            raise DicomWebError("give a PATH or --dicomweb URL --study UID, not both")
    inputs = list(paths)
    if getattr(args, "dicomweb", None):
        if not args.study:
            raise DicomWebError("--dicomweb needs --study STUDY_UID (find it with the PACS dialog or your PACS)")
        inputs.append(DicomWebInput(args.dicomweb, check_uid(args.study, "--study")))
    elif getattr(args, "study", None):
        raise DicomWebError("--study needs --dicomweb URL")
    elif getattr(args, "stow", False):
        raise DicomWebError("--stow stores the SR on the server the study came from: give --dicomweb and --study")
    if not inputs:
        raise DicomWebError("nothing to read: give PATH arguments or --dicomweb URL --study UID")
    if isinstance(getattr(args, "series", None), str) and len(inputs) > 1:
        raise DicomWebError("--series UID picks a series of the --dicomweb study; give paths and --dicomweb separately")
    return inputs


def load_input(path, args, load_files):
    """Volumes of one input: a DICOMweb study (every image series, or --series) or a path."""
    if not isinstance(path, DicomWebInput):
        return load_files(path, args.series)  # an index or a SeriesInstanceUID, as `select_series` takes
    server = connect(path.url, args.dicomweb_user, args.dicomweb_password, args.dicomweb_token, args.dicomweb_timeout)
    max_bytes = None if args.max_download_gb <= 0 else int(args.max_download_gb * 2**30)
    series = args.series
    if isinstance(series, int):  # the image series in order, picked by the readers' one rule
        from napari_med3dvlm.io import select_series

        images = server.image_series(path.study)
        series = images[select_series(images, series, "the study")].series_uid
    volumes = server.read_study(path.study, series, max_bytes)
    for volume in volumes:
        if min(volume.shape) < 2:
            from napari_med3dvlm.io.preprocess import thin_volume_message

            raise VolumeReadError(thin_volume_message(volume.shape, "the series"))
    return volumes


def sr_outputs(args, record, volume, stem: str, label: str) -> int:
    """--sr / --stow for one report: build the SR (in memory first), write ``stem.dcm``, store it.
    Prints what was written and where it went; returns 1 on a fault (printed), else 0."""
    return _write_and_store(
        args, lambda: build_report_sr(volume.dicom, record.text, model_id=record.model_id, complete=not record.stopped),
        stem, label,
    )


def chat_sr_outputs(args, volume, turns, model_id: str, label: str = "answer") -> int:
    """``ask --sr / --stow``: the questions (closed ones with their choices) and answers of ``turns``
    (`prompts.Turn`) as an SR in the next free ``chat-NN.dcm`` of --out, stored with --stow."""
    from .dicom_sr import chat_questions

    out = Path(args.out)
    number = 1
    while (out / f"chat-{number:02d}.dcm").exists():
        number += 1
    return _write_and_store(
        args, lambda: build_report_sr(volume.dicom, None, model_id=model_id, questions=chat_questions(turns)),
        f"chat-{number:02d}", label,
    )


def check_sr_source(args, volume) -> None:
    """Before any generation: --sr/--stow need --out and a volume read from DICOM (`DicomSrError`)."""
    if not (getattr(args, "sr", False) or getattr(args, "stow", False)):
        return
    if getattr(args, "out", None) is None:
        raise DicomSrError("--sr needs --out DIR (the folder for the DICOM SR)")
    if getattr(volume, "dicom", None) is None or not volume.dicom.headers:
        raise DicomSrError(
            "a DICOM SR needs a DICOM source (a series read from DICOM files or a DICOMweb server); this volume "
            "has none"
        )


def _write_and_store(args, build, stem: str, label: str) -> int:
    try:
        sr = build()
        path = write_sr(sr, Path(args.out) / f"{stem}.dcm")
        print(f"{label}: {path.name} (DICOM SR, new series {sr.SeriesInstanceUID} in the source's study)")
        if args.stow:
            server = connect(args.dicomweb, args.dicomweb_user, args.dicomweb_password, args.dicomweb_token,
                             args.dicomweb_timeout)
            where = server.store(sr)
            print(f"{label}: stored on {server.url}: {where}")
    except (DicomWebError, DicomSrError) as err:
        print(f"error: {label}: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    return 0
