"""Which series: the one rule that the readers, the command line and the docks use to pick one series
of a file, folder, zip or selection.

A series is chosen by its index (in `list_series` order; negative counts from the end), by its
`SeriesInfo` or its ``uid_hash`` (or an unambiguous start of it), by its description, or by its
SeriesInstanceUID (matched through its hash, so the UID itself never has to be kept). Picking is done
on what the headers say, before any pixel is decoded: the caller then reads only the chosen series.

Messages list the series by index, description and hash only: never a UID, a name or a folder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ._util import VolumeReadError, short_hash

_UID = re.compile(r"[0-9]+(\.[0-9]+)+")


def series_names(candidates: Sequence) -> str:
    """The candidates as a message lists them: ``0: description [hash]; 1: ...``."""
    return "; ".join(f"{i}: {c.description} [{c.uid_hash}]" for i, c in enumerate(candidates))


def select_series(candidates: Sequence, series, label: str) -> int:
    """The index into ``candidates`` (objects with ``uid_hash`` and ``description``, such as
    `SeriesInfo`) that ``series`` picks; `VolumeReadError` naming ``label`` and listing the candidates
    when it picks none or several. ``series`` None picks the only candidate."""
    count = len(candidates)
    if series is None:
        if count == 1:
            return 0
        raise VolumeReadError(
            f"{label} holds {count} series; choose one by index, hash or description: {series_names(candidates)}"
        )
    if isinstance(series, (int, np.integer)):
        if not -count <= series < count:
            raise VolumeReadError(
                f"{label}: series index {series} is out of range ({count} series: {series_names(candidates)})"
            )
        return int(series) % count
    if not isinstance(series, str):
        series = getattr(series, "uid_hash", series)  # a SeriesInfo
    series = str(series)
    matches = _matches(candidates, series)
    if len(matches) != 1:
        names, uid = series_names(candidates), _UID.fullmatch(series)  # a UID is never echoed
        if uid and not matches:
            raise VolumeReadError(f"{label} has no series with the given series UID ({count} series: {names})")
        shown = "the given series UID" if uid else repr(series)
        what = "matches no" if not matches else "matches several"
        raise VolumeReadError(f"{label}: {shown} {what} series: {names}")
    return matches[0]


def _matches(candidates: Sequence, series: str) -> list[int]:
    """Exact hash or description first; then the start of a hash; then a SeriesInstanceUID (its hash,
    which every part of a split series shares)."""
    exact = [i for i, c in enumerate(candidates) if series in (c.uid_hash, c.description)]
    if exact:
        return exact
    prefix = [i for i, c in enumerate(candidates) if c.uid_hash.startswith(series)]
    if prefix or not _UID.fullmatch(series):
        return prefix
    hashed = short_hash(series)
    return [i for i, c in enumerate(candidates) if c.uid_hash.split("-")[0] == hashed]
