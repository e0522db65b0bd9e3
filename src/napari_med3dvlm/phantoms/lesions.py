"""Painting focal findings, effusions and ascites into a built anatomy.

Lesions are clipped to their host organ, so what the report calls "a 4 cm cyst in the left kidney"
is a fluid-density sphere inside the left kidney label and nowhere else. Each finding gets its own
label value (index + 1) in `Canvas.finding`.
"""

from __future__ import annotations

import numpy as np

from .anatomy import LABEL
from .case import Finding, PhantomCase
from .geometry import Canvas, cylinder_field, ellipsoid_field
from .tissues import hu

_L = LABEL
_BRAIN_LOBES = {"frontal": (-45, -52, 32), "parietal": (-62, 25, 36), "temporal": (20, -12, 50), "occipital": (-15, 62, 26)}
_LUNG_LOBES = {"upper lobe": (-75, 5, 72), "middle lobe": (35, -45, 70), "lower lobe": (70, 40, 72)}

#: site -> (centre (z, y, x) in mm before scaling, placement jitter in mm, host organ labels)
SITES: dict[str, tuple[tuple[float, float, float], float, tuple[int, ...]]] = {
    "liver right lobe": ((-60, 5, -85), 12, (_L["liver"], _L["vessel"])),
    "liver left lobe": ((-75, -30, 5), 8, (_L["liver"], _L["vessel"])),
    "liver": ((-60, 0, -60), 0, (_L["liver"],)),
    "spleen": ((-75, 42, 102), 6, (_L["spleen"],)),
    "pancreas head": ((-10, 18, -20), 3, (_L["pancreas"], _L["cavity"], _L["vessel"])),
    "pancreas tail": ((-10, 18, 70), 3, (_L["pancreas"], _L["cavity"])),
    "right kidney": ((30, 62, -80), 8, (_L["right kidney"], _L["collecting system"])),
    "left kidney": ((15, 62, 80), 8, (_L["left kidney"], _L["collecting system"])),
}
for _side, _sx in (("right", -1), ("left", 1)):
    for _lobe, (_z, _y, _x) in _BRAIN_LOBES.items():
        SITES[f"{_side} {_lobe}"] = ((_z, _y, _sx * _x), 5, (_L["brain"], _L["vessel"]))
    for _lobe, (_z, _y, _x) in _LUNG_LOBES.items():
        if _side == "left" and _lobe == "middle lobe":
            continue
        SITES[f"{_side} {_lobe}"] = ((_z, _y, _sx * _x), 10, (_L[f"{_side} lung"],))

_SEVERITY_DEPTH = {"small": 0.25, "moderate": 0.45, "large": 0.7}


def paint_findings(c: Canvas, case: PhantomCase, rng: np.random.Generator) -> None:
    for index, f in enumerate(case.findings):
        label = index + 1
        if f.kind == "effusion":
            _effusion(c, case, f, label)
        elif f.kind == "enlargement":
            _mark_enlarged(c, f, label)
        else:
            _focal(c, case, f, label, rng)


def _lesion_centres(case: PhantomCase, f: Finding, rng) -> list[tuple[tuple[float, ...], float]]:
    """(centre, diameter mm) of each lesion: the largest at the site, smaller ones spread round it."""
    s = case.scale
    base, jitter, _ = SITES[f.site]
    centre = np.asarray(base, dtype=float) * s + rng.uniform(-jitter, jitter, 3) * s
    out = [(tuple(centre), f.size_cm * 10.0)]
    for k in range(1, f.count):
        angle = rng.uniform(0, 2 * np.pi)
        offset_mm = f.size_cm * 10.0 * 0.5 + 16.0
        direction = np.array([np.sin(angle) * 0.6, np.cos(angle) * 0.6, np.sin(angle + 1.3)])
        direction /= np.linalg.norm(direction)
        size = max(20.0, f.size_cm * 10.0 * rng.uniform(0.55, 0.8))
        out.append((tuple(centre + direction * (offset_mm + size / 2) * (1 if k == 1 else -1)), size))
    return out


def _focal(c: Canvas, case: PhantomCase, f: Finding, label: int, rng) -> None:
    ph = case.phase
    hosts = SITES[f.site][2]
    for centre, diameter in _lesion_centres(case, f, rng):
        radii = tuple(diameter / 2.0 * a for a in rng.uniform(0.85, 1.0, 3))
        if f.kind == "cyst":
            c.ellipsoid(centre, radii, hu("cyst", ph), finding=label, within=hosts)
        elif f.kind == "calcification":
            c.ellipsoid(centre, radii, hu("calcification", ph), finding=label, within=hosts + (_L["cavity"],))
        elif f.kind == "haemorrhage":
            if f.organ == "brain":
                halo = tuple(r + 4.0 for r in radii)
                c.ellipsoid(centre, halo, hu("oedema", ph), within=hosts)
            c.ellipsoid(centre, radii, hu("haemorrhage", ph), finding=label, within=hosts + (_L["cavity"],))
        elif f.kind == "mass":
            if f.organ == "brain":
                halo = tuple(r * 1.5 for r in radii)
                c.ellipsoid(centre, halo, hu("oedema", ph), within=hosts)
            c.ellipsoid(centre, radii, hu("mass", ph), finding=label, within=hosts + (_L["cavity"],))
            if diameter >= 30.0:
                core = tuple(r * 0.45 for r in radii)
                c.ellipsoid(centre, core, hu("necrosis", ph), finding=label, within=hosts + (_L["cavity"],))
        else:
            raise ValueError(f"not a focal finding: {f.kind}")


def _effusion(c: Canvas, case: PhantomCase, f: Finding, label: int) -> None:
    s, ph = case.scale, case.phase
    depth = _SEVERITY_DEPTH[f.severity or "moderate"]
    fluid = hu("fluid", ph) + 4
    if f.organ == "pleural space":
        sides = {"right": ("right lung",), "left": ("left lung",), "bilateral": ("right lung", "left lung")}[f.side]
        for lung in sides:
            # dependent fluid: the back part of the lung, deeper with severity, thicker at the base
            box, r = ellipsoid_field(c.grid, (0, 5 * s, 0), (1e4, 82 * s, 1e4))
            yy = c.grid.y[box[1]][None, :, None]
            zz = c.grid.z[box[0]][:, None, None]
            threshold = (87 - 164 * depth) * s - np.clip(zz, 0, None) * depth * 0.6
            inside = np.broadcast_to(yy > threshold, r.shape)
            c.paint(box, inside, fluid, organ=_L["pleural space"], finding=label, within=(_L[lung],))
    elif f.organ == "pericardium":
        thick = {"small": 7.0, "moderate": 12.0, "large": 18.0}[f.severity or "moderate"] * s
        hx = 62 * s
        c.ellipsoid((75 * s, -25 * s, 18 * s), (58 * s + thick, 55 * s + thick, hx + thick), fluid,
                    organ=_L["pericardium"], finding=label, within=(_L["cavity"], _L["right lung"], _L["left lung"]))
    elif f.organ == "peritoneal cavity":
        box, r = cylinder_field(c.grid, (0, 0), (99 * s, 142 * s), (-1e4, 1e4))
        rim = r > 1.0 - depth * 0.45
        c.paint(box, rim, fluid, organ=_L["peritoneal cavity"], finding=label, within=(_L["cavity"],))
        # fluid also fills the pelvis (the lowest part of the field) and around the liver
        c.ellipsoid((150 * s, -10 * s, 0), (70 * depth * s + 20 * s, 60 * s, 90 * s), fluid,
                    organ=_L["peritoneal cavity"], finding=label, within=(_L["cavity"],))
    else:
        raise ValueError(f"no effusion model for {f.organ}")


def _mark_enlarged(c: Canvas, f: Finding, label: int) -> None:
    """The organ was already drawn enlarged; label its voxels as the finding."""
    organ = {"heart": "heart", "liver": "liver", "spleen": "spleen", "lateral ventricles": "ventricles"}[f.organ]
    c.finding[(c.organ == _L[organ]) & (c.finding == 0)] = label
