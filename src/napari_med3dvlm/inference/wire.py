"""How a volume crosses the network to a backend server, and how both sides name it.

A volume travels once as gzip-compressed NIfTI-1 bytes of its display-ordered array and affine
(`io.write_nifti_volume`'s layout, so the server reads it with the same hardened NIfTI reader as a
file), plus three facts NIfTI cannot hold: modality, acquisition plane and the window the model is
given. The volume's id is a content hash of exactly those bytes and facts, so the client can ask
whether the server already holds a volume before sending it, and two uploads of the same volume
cost one. Compression uses a fixed header time, so the same volume always gives the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re

import nibabel as nib
import numpy as np

from napari_med3dvlm.io import Volume
from napari_med3dvlm.io.volume import PLANE_NAMES

#: Content types a server accepts for an upload.
NIFTI_GZ = "application/gzip"
DICOM_ZIP = "application/zip"
#: A volume id: 32 lower-case hex digits (the first 128 bits of a SHA-256). Anything else is refused
#: before it comes near the cache, so an id can never name a path.
VOLUME_ID = re.compile(r"^[0-9a-f]{32}$")


def window_text(window) -> str:
    """A window as a query value: '' (the file's / modality default), a preset name, or 'C,W'."""
    if window is None:
        return ""
    if isinstance(window, str):
        return window
    center, width = (float(v) for v in window)
    return f"{center!r},{width!r}"


def parse_window(text: str):
    """The inverse of `window_text`; raises ValueError naming what is wrong."""
    from napari_med3dvlm.io import WINDOW_PRESETS

    text = (text or "").strip()
    if not text:
        return None
    if "," in text:
        try:
            center, width = (float(v) for v in text.split(",", 1))
        except ValueError:
            raise ValueError(f"window {text!r} is not CENTER,WIDTH") from None
        if not (np.isfinite(center) and np.isfinite(width) and width > 0):
            raise ValueError(f"window {text!r} needs finite values and a positive width")
        return (center, width)
    if text not in WINDOW_PRESETS:
        raise ValueError(f"window {text!r} is not a preset ({', '.join(WINDOW_PRESETS)}) nor CENTER,WIDTH")
    return text


def volume_params(volume: Volume) -> dict[str, str]:
    """The facts beside the NIfTI bytes, as query parameters."""
    return {"modality": volume.modality, "plane": volume.plane, "window": window_text(volume.window)}


def check_params(modality: str, plane: str, window: str) -> dict:
    """Validated upload facts (ValueError with a message otherwise)."""
    modality = (modality or "").strip().upper()
    if not re.fullmatch(r"[A-Z]{2,4}", modality):
        raise ValueError(f"modality {modality!r} is not a DICOM modality code such as CT or MR")
    if plane not in PLANE_NAMES:
        raise ValueError(f"plane {plane!r} is not one of {', '.join(PLANE_NAMES)}")
    return {"modality": modality, "plane": plane, "window": parse_window(window)}


def nifti_bytes(volume: Volume) -> bytes:
    """The volume as gzip-compressed NIfTI-1, deterministic for a given volume."""
    from napari_med3dvlm.io.orientation import affine_from_scale_translate

    affine = volume.affine
    if affine is None:
        affine = affine_from_scale_translate(volume.spacing, volume.origin)
    data = np.asarray(volume.data)
    image = nib.Nifti1Image(np.asarray(data.transpose(2, 1, 0)), np.asarray(affine, dtype=float))
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def content_id(body: bytes, params: dict[str, str]) -> str:
    """The id both sides compute for an upload: SHA-256 over the bytes and the canonical facts."""
    digest = hashlib.sha256(body)
    digest.update(b"\0" + json.dumps(params, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def scope_to_wire(result) -> dict:
    """A `model.scope.ScopeResult` as JSON, every field kept (the export form drops some)."""
    return {
        "reasons": [{"code": r.code, "message": r.message, "short": r.short} for r in result.reasons],
        "advice": result.advice,
        "distance": None if result.distance is None else float(result.distance),
        "checked": list(result.checked),
    }


def scope_from_wire(values: dict):
    from napari_med3dvlm.model.scope import ScopeReason, ScopeResult

    if not values:
        return ScopeResult()
    return ScopeResult(
        reasons=[ScopeReason(**r) for r in values.get("reasons", [])],
        advice=values.get("advice") or ScopeResult().advice,
        distance=values.get("distance"),
        checked=tuple(values.get("checked", ())),
    )
