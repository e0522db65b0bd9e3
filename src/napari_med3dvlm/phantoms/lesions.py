"""Painting focal findings, effusions and ascites into a built anatomy.

Lesions are placed inside their host organ (by rejection sampling) and clipped to it, so what the
report calls "a 4 cm cyst in the left kidney" is a fluid-density sphere in the left kidney (kidney
lesions may bulge out of the kidney, as exophytic ones do), and "two cysts" are two separate ones. Each finding gets its own
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


#: Labels a lesion may extend into besides its host: kidney lesions may be exophytic.
_SPILL = {"kidney": (_L["cavity"],), "pancreas": (_L["cavity"],)}
#: A placement is accepted when this share of the lesion lies in its host and on no other lesion.
_MIN_INSIDE = 0.85


def paint_findings(c: Canvas, case: PhantomCase, rng: np.random.Generator) -> None:
    """Focal lesions first (so they are placed in intact organs), then fluid, which flows
    around them, then the labels of enlarged organs."""
    order = {"enlargement": 2, "effusion": 1}
    for index, f in sorted(enumerate(case.findings), key=lambda item: order.get(item[1].kind, 0)):
        label = index + 1
        if f.kind == "effusion":
            _effusion(c, case, f, label)
        elif f.kind == "enlargement":
            _mark_enlarged(c, f, label)
        else:
            _focal(c, case, f, label, rng)


def _allowed(f: Finding) -> tuple[int, ...]:
    return SITES[f.site][2] + _SPILL.get(f.organ, ())


def _place_lesions(c: Canvas, case: PhantomCase, f: Finding, rng) -> list[tuple[np.ndarray, tuple]]:
    """(centre, radii) of each lesion: the largest near the site's centre, the others around it,
    each mostly inside the host organ and separated from the others by a visible gap.

    Rejection sampling over candidate centres; if no candidate passes, the best one is kept."""
    s = case.scale
    base, jitter, _ = SITES[f.site]
    allowed = _allowed(f)
    diameters = [f.size_cm * 10.0] + [max(20.0, f.size_cm * 10.0 * rng.uniform(0.55, 0.8)) for _ in range(f.count - 1)]
    placed: list[tuple[np.ndarray, tuple]] = []
    for i, diameter in enumerate(diameters):
        shape = rng.uniform(0.85, 1.0, 3)
        shape[rng.integers(3)] = 1.0  # the stated size is the largest diameter
        radii = tuple(float(r) for r in diameter / 2.0 * shape)
        best, best_score = None, -1.0
        for attempt in range(80):
            if i == 0:
                spread = (jitter + attempt * 1.5) * s
                centre = np.asarray(base, dtype=float) * s + rng.uniform(-spread, spread, 3)
            else:
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction)
                distance = placed[0][1][0] + radii[0] + rng.uniform(8.0, 30.0)
                centre = placed[0][0] + direction * max(distance, max(placed[0][1]) + max(radii) + 8.0)
            if any(np.linalg.norm(centre - p) < max(pr) + max(radii) + 8.0 for p, pr in placed):
                continue
            score = c.fraction_inside(centre, radii, allowed)
            if score > best_score:
                best, best_score = centre, score
            if score >= _MIN_INSIDE:
                break
        if best is not None:
            placed.append((best, radii))
    return placed


def _focal(c: Canvas, case: PhantomCase, f: Finding, label: int, rng) -> None:
    ph = case.phase
    allowed = _allowed(f)
    for centre, radii in _place_lesions(c, case, f, rng):
        centre = tuple(centre)
        if f.kind in ("cyst", "calcification"):
            c.ellipsoid(centre, radii, hu(f.kind, ph), finding=label, within=allowed)
        elif f.kind == "haemorrhage":
            if f.organ == "brain":
                c.ellipsoid(centre, tuple(r + 4.0 for r in radii), hu("oedema", ph), within=SITES[f.site][2],
                            protect_findings=True)
                c.ellipsoid(centre, radii, hu("haemorrhage", ph), finding=label, within=allowed)
            else:  # clot inside a thin serum rim: visible even against unenhanced liver (60 HU)
                c.ellipsoid(centre, radii, hu("serum", ph), finding=label, within=allowed)
                c.ellipsoid(centre, tuple(r * 0.85 for r in radii), hu("haemorrhage", ph), finding=label, within=allowed)
        elif f.kind == "mass":
            if f.organ == "brain":
                c.ellipsoid(centre, tuple(r * 1.5 for r in radii), hu("oedema", ph), within=SITES[f.site][2],
                            protect_findings=True)
            c.ellipsoid(centre, radii, hu("mass", ph), finding=label, within=allowed)
            # a necrotic centre: keeps masses visible where they match their organ before contrast
            c.ellipsoid(centre, tuple(r * 0.5 for r in radii), hu("necrosis", ph), finding=label, within=allowed)
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
            c.paint(box, inside, fluid, organ=_L["pleural space"], finding=label, within=(_L[lung],),
                    protect_findings=True)
    elif f.organ == "pericardium":
        thick = {"small": 7.0, "moderate": 12.0, "large": 18.0}[f.severity or "moderate"] * s
        big = next((g for g in case.findings if g.kind == "enlargement" and g.organ == "heart"), None)
        hx = (big.size_cm * 5.0 if big else 62.0) * s  # as drawn by anatomy.build_chest
        c.ellipsoid((75 * s, -25 * s, 18 * s), (58 * s + thick, 55 * s + thick, hx + thick), fluid,
                    organ=_L["pericardium"], finding=label, within=(_L["cavity"], _L["right lung"], _L["left lung"]),
                    protect_findings=True)
    elif f.organ == "peritoneal cavity":
        box, r = cylinder_field(c.grid, (0, 0), (99 * s, 142 * s), (-1e4, 1e4))
        rim = r > 1.0 - depth * 0.45
        c.paint(box, rim, fluid, organ=_L["peritoneal cavity"], finding=label, within=(_L["cavity"],),
                protect_findings=True)
        # fluid also fills the pelvis (the lowest part of the field) and around the liver
        c.ellipsoid((150 * s, -10 * s, 0), (70 * depth * s + 20 * s, 60 * s, 90 * s), fluid,
                    organ=_L["peritoneal cavity"], finding=label, within=(_L["cavity"],), protect_findings=True)
    else:
        raise ValueError(f"no effusion model for {f.organ}")


def _mark_enlarged(c: Canvas, f: Finding, label: int) -> None:
    """The organ was already drawn enlarged; label its voxels as the finding."""
    organ = {"heart": "heart", "liver": "liver", "spleen": "spleen", "lateral ventricles": "ventricles"}[f.organ]
    c.finding[(c.organ == _L[organ]) & (c.finding == 0)] = label
