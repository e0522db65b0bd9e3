"""DICOM series from files, folders (searched recursively) and .zip archives.

Slices are grouped by SeriesInstanceUID (and split further when one series mixes image sizes or
orientations, as localisers do), ordered by their position along the slice normal, and spaced by
those positions rather than by SliceThickness. Stored values are rescaled to modality units (HU
for CT) exactly once, here. Enhanced/multi-frame objects take geometry, rescale and window from
their functional groups.

Nothing that identifies a patient (names, IDs, dates, UIDs in clear) leaves this package: series
are named by their description and a short hash of the SeriesInstanceUID.

The reader is split along its steps: `sources` (finding files), `headers` (reading and grouping
them), `geometry`, `pixels` and `reader` (the entry points); `records` holds what passes between them.
"""

from .reader import list_dicom_series, read_dicom_series, read_dicom_volumes
from .records import InstanceSet, SeriesInfo
from .sources import (
    DICOM_SUFFIXES,
    ZIP_RATIO_FLOOR,
    ZIP_RATIO_LIMIT,
    has_dicom_magic,
    is_unreadable_zip,
    looks_like_dicom,
)

__all__ = [
    "DICOM_SUFFIXES",
    "ZIP_RATIO_FLOOR",
    "ZIP_RATIO_LIMIT",
    "InstanceSet",
    "SeriesInfo",
    "has_dicom_magic",
    "is_unreadable_zip",
    "list_dicom_series",
    "looks_like_dicom",
    "read_dicom_series",
    "read_dicom_volumes",
]
