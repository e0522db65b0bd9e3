"""Head, chest and abdomen built from ellipsoids and cylinders in canonical mm coordinates.

Axes: z runs head to feet, y front to back, x from the patient's right to left, all centred on the
field of view. Each builder paints normal anatomy for one contrast phase; organ enlargement is
applied while building (the organ is drawn bigger), focal findings are painted afterwards by
`lesions`.
"""

from __future__ import annotations

import numpy as np

from .case import PhantomCase
from .geometry import Canvas, cylinder_field
from .tissues import hu

ORGANS = (
    "body", "cavity", "bone", "right lung", "left lung", "heart", "vessel", "airway", "liver",
    "spleen", "right kidney", "left kidney", "pancreas", "stomach", "bowel", "gallbladder",
    "brain", "ventricles", "pleural space", "pericardium", "peritoneal cavity", "muscle",
    "collecting system",
)
#: Organ name -> label value in `Canvas.organ` (0 is outside the body).
LABEL = {name: i + 1 for i, name in enumerate(ORGANS)}

#: Field of view (z, y, x) in mm per region.
FOV_MM = {"head": (220.0, 240.0, 240.0), "chest": (300.0, 380.0, 380.0), "abdomen": (300.0, 380.0, 380.0)}


def _enlargement(case: PhantomCase, organ: str):
    for f in case.findings:
        if f.kind == "enlargement" and f.organ == organ:
            return f
    return None


def _trunk(c: Canvas, s: float, ry: float, rx: float) -> tuple[float, float]:
    """Skin and subcutaneous fat, the muscular wall and the fat-filled body cavity.
    Returns the cavity radii (y, x)."""
    z = (-1e4, 1e4)
    c.cylinder((0, 0), (ry * s, rx * s), z, hu("fat", "non-contrast"), LABEL["body"])
    c.cylinder((0, 0), ((ry - 14) * s, (rx - 14) * s), z, 55.0, LABEL["muscle"])
    cav = ((ry - 26) * s, (rx - 26) * s)
    c.cylinder((0, 0), cav, z, hu("fat", "non-contrast") + 10, LABEL["cavity"])
    return cav


def _ribs(c: Canvas, s: float, ry: float, rx: float, zlim, period: float = 30.0):
    """Ribs: a thin band in the chest wall, present on alternating stretches along z."""
    box, r = cylinder_field(c.grid, (0, 0), ((ry - 17) * s, (rx - 17) * s), zlim)
    band = (r <= 1.0) & (r > 1.0 - 8.0 / ((ry - 17) * s))
    zz = c.grid.z[box[0]][:, None, None]
    yy = c.grid.y[box[1]][None, :, None]
    xx = c.grid.x[box[2]][None, None, :]
    # ribs slope down towards the front: the phase along z shifts with the angle around the body
    angle = np.arctan2(yy, np.abs(xx) + 1e-3)
    on = np.cos(2 * np.pi * (zz + 35.0 * s * np.sin(-angle)) / (period * s)) > 0.3
    c.paint(box, band & on, hu("rib", "non-contrast"), LABEL["bone"])


def _spine(c: Canvas, s: float, y: float, zlim, body_r: float = 17.0):
    c.cylinder((y * s, 0), (body_r * s, body_r * s * 1.1), zlim, 700.0, LABEL["bone"])
    c.cylinder((y * s, 0), ((body_r - 3) * s, (body_r - 3) * s * 1.1), zlim, hu("cancellous bone", "non-contrast"), LABEL["bone"])
    # intervertebral discs: a soft-tissue slab every ~3 cm along the column
    for z0 in np.arange(-200.0, 200.0, 32.0):
        c.cylinder((y * s, 0), (body_r * s, body_r * s * 1.1), (z0 * s, (z0 + 7) * s), 90.0, LABEL["bone"])
    c.cylinder(((y + body_r + 8) * s, 0), (8 * s, 7 * s), zlim, hu("csf", "non-contrast"), LABEL["body"])
    inside_body = (LABEL["body"], LABEL["muscle"], LABEL["cavity"])
    c.cylinder(((y + body_r + 20) * s, 0), (6 * s, 4 * s), zlim, 650.0, LABEL["bone"], within=inside_body)
    for side in (-1, 1):  # laminae and paraspinal muscles
        c.cylinder(((y + body_r + 13) * s, side * 13 * s), (5 * s, 5 * s), zlim, 650.0, LABEL["bone"], within=inside_body)
        c.cylinder(((y + body_r + 16) * s, side * 34 * s), (14 * s, 20 * s), zlim, 55.0, LABEL["muscle"],
                   within=inside_body)


def _lung_vessels(c: Canvas, case: PhantomCase, count: int) -> None:
    """Pulmonary vessels: short thin segments, thicker and denser towards the hila, so lungs
    are not an empty black field (they stay far smaller than any reported nodule)."""
    s, ph = case.scale, case.phase
    rng = np.random.default_rng(case.seed + 11)
    for side, name in ((-1, "right lung"), (1, "left lung")):
        for _ in range(count):
            hilar = rng.random() < 0.4
            x = side * (rng.uniform(30, 55) if hilar else rng.uniform(40, 130)) * s
            centre = (rng.uniform(-110, 120) * s, rng.uniform(-60, 70) * s, x)
            width = (rng.uniform(3.0, 5.0) if hilar else rng.uniform(1.5, 3.0)) * s
            length = rng.uniform(8, 22) * s
            radii = [width, width, width]
            radii[int(rng.integers(3))] = length
            value = hu("artery", ph) * 0.6 if rng.random() < 0.5 else hu("systemic vein", ph) * 0.8
            c.ellipsoid(centre, tuple(radii), value, LABEL["vessel"], within=(LABEL[name],))


def build_chest(c: Canvas, case: PhantomCase) -> None:
    s, ph = case.scale, case.phase
    _trunk(c, s, 118, 170)
    _ribs(c, s, 118, 170, (-1e4, 1e4))
    c.cylinder((-100 * s, 0), (9 * s, 16 * s), (-120 * s, 90 * s), 500.0, LABEL["bone"])  # sternum
    # liver dome under the right hemidiaphragm, then the lungs over it
    c.ellipsoid((190 * s, 0, -45 * s), (80 * s, 80 * s, 95 * s), hu("liver", ph), LABEL["liver"])
    c.ellipsoid((160 * s, 20 * s, 80 * s), (45 * s, 45 * s, 35 * s), hu("spleen", ph), LABEL["spleen"])
    for side, name in ((-1, "right lung"), (1, "left lung")):
        c.ellipsoid((0, 5 * s, side * 72 * s), (150 * s, 82 * s, 66 * s), hu("lung", ph), LABEL[name],
                    within=(LABEL["cavity"],))
    _lung_vessels(c, case, count=70)
    # mediastinum: heart (myocardium + blood pool), great vessels, airway, oesophagus
    enlarged = _enlargement(case, "heart")
    hx = (enlarged.size_cm * 5.0 if enlarged else 62.0) * s
    c.ellipsoid((75 * s, -25 * s, 18 * s), (58 * s, 55 * s, hx), hu("myocardium", ph), LABEL["heart"])
    c.ellipsoid((75 * s, -25 * s, 18 * s), (40 * s, 38 * s, hx - 18 * s), hu("artery", ph) * 0.85 + 6, LABEL["heart"])
    c.ellipsoid((5 * s, -12 * s, 28 * s), (16 * s, 26 * s, 16 * s), hu("artery", ph) * 0.9, LABEL["vessel"])  # pulmonary trunk
    c.cylinder((-22 * s, 4 * s), (15 * s, 15 * s), (-30 * s, 40 * s), hu("artery", ph), LABEL["vessel"])  # ascending aorta
    c.ellipsoid((-38 * s, 18 * s, 12 * s), (14 * s, 52 * s, 16 * s), hu("artery", ph), LABEL["vessel"])  # arch
    c.cylinder((58 * s, 26 * s), (13 * s, 13 * s), (-38 * s, 1e4), hu("artery", ph), LABEL["vessel"])  # descending aorta
    c.cylinder((-18 * s, -32 * s), (10 * s, 10 * s), (-1e4, 40 * s), hu("systemic vein", ph), LABEL["vessel"])  # SVC
    c.cylinder((-8 * s, 0), (9 * s, 11 * s), (-1e4, -25 * s), hu("air", ph), LABEL["airway"])
    for side in (-1, 1):
        c.ellipsoid((-10 * s, -6 * s, side * 22 * s), (8 * s, 8 * s, 16 * s), hu("air", ph), LABEL["airway"],
                    zlim=(-25 * s, 1e4))
    c.cylinder((42 * s, 8 * s), (7 * s, 7 * s), (-1e4, 1e4), 40.0, LABEL["body"])  # oesophagus
    _spine(c, s, 68, (-1e4, 1e4))


def build_abdomen(c: Canvas, case: PhantomCase) -> None:
    s, ph = case.scale, case.phase
    _trunk(c, s, 125, 168)
    _ribs(c, s, 125, 168, (-1e4, -30 * s))
    for side, name in ((-1, "right lung"), (1, "left lung")):  # lung bases
        c.ellipsoid((-185 * s, 35 * s, side * 80 * s), (70 * s, 65 * s, 60 * s), hu("lung", ph), LABEL[name],
                    within=(LABEL["cavity"],))
    big = _enlargement(case, "liver")
    lz = (big.size_cm * 5.0 if big else 80.0) * s
    grow = 1.12 if big else 1.0
    # right lobe, then the thinner left lobe reaching across the midline in front of the stomach
    lc = (-65 * s + (lz - 80 * s) * 0.6, 0, -62 * s)
    liver_ok = (LABEL["cavity"], LABEL["right lung"])
    c.ellipsoid(lc, (lz, 82 * s * grow, 80 * s * grow), hu("liver", ph), LABEL["liver"], within=liver_ok)
    c.ellipsoid((lc[0] - 12 * s, -30 * s, 2 * s), (lz * 0.55, 42 * s * grow, 62 * s * grow), hu("liver", ph),
                LABEL["liver"], within=liver_ok)
    # portal vein and intrahepatic branches, hepatic veins
    c.ellipsoid((-25 * s, 8 * s, -18 * s), (10 * s, 9 * s, 38 * s), hu("portal vein", ph), LABEL["vessel"])
    for dz, dx in ((-30, -60), (-55, -30), (-10, -95)):
        c.ellipsoid(((-25 + dz) * s, 5 * s, (-18 + dx) * s + 0), (22 * s, 5 * s, 5 * s), hu("portal vein", ph),
                    LABEL["vessel"], within=(LABEL["liver"],))
        c.ellipsoid(((-25 + dz * 0.5) * s, 5 * s, (-18 + dx * 0.5) * s), (5 * s, 5 * s, 30 * s), hu("portal vein", ph),
                    LABEL["vessel"], within=(LABEL["liver"],))
    c.ellipsoid((-15 * s, -42 * s, -48 * s), (30 * s, 16 * s, 16 * s), hu("fluid", ph), LABEL["gallbladder"])
    bigs = _enlargement(case, "spleen")
    sz = (bigs.size_cm * 5.0 if bigs else 55.0) * s
    sgrow = 1.25 if bigs else 1.0
    c.ellipsoid((-75 * s + (sz - 55 * s) * 0.5, 42 * s, 102 * s), (sz, 45 * s * sgrow, 32 * s * sgrow), hu("spleen", ph),
                LABEL["spleen"], within=(LABEL["cavity"],))
    # stomach: wall, fluid, an air cap in front
    c.ellipsoid((-85 * s, -30 * s, 45 * s), (42 * s, 35 * s, 40 * s), hu("bowel wall", ph), LABEL["stomach"], within=(LABEL["cavity"],))
    c.ellipsoid((-85 * s, -30 * s, 45 * s), (36 * s, 29 * s, 34 * s), hu("fluid", ph) + 10, LABEL["stomach"], within=(LABEL["stomach"],))
    c.ellipsoid((-85 * s, -50 * s, 45 * s), (30 * s, 14 * s, 28 * s), hu("air", ph), LABEL["stomach"], within=(LABEL["stomach"],))
    c.ellipsoid((-10 * s, 18 * s, 28 * s), (16 * s, 14 * s, 68 * s), hu("pancreas", ph), LABEL["pancreas"])
    # kidneys: cortex, medulla, collecting system (pelvis), the right one lower
    for side, name, zc in ((-1, "right kidney", 30), (1, "left kidney", 15)):
        center = (zc * s, 62 * s, side * 75 * s)
        c.ellipsoid(center, (55 * s, 28 * s, 30 * s), hu("kidney cortex", ph), LABEL[name])
        c.ellipsoid(center, (42 * s, 18 * s, 19 * s), hu("kidney medulla", ph), LABEL[name])
        c.ellipsoid((zc * s, 58 * s, side * 58 * s), (24 * s, 10 * s, 12 * s), hu("collecting system", ph),
                    LABEL["collecting system"])
    c.cylinder((40 * s, 22 * s), (11 * s, 11 * s), (-1e4, 1e4), hu("artery", ph), LABEL["vessel"])  # aorta
    c.cylinder((36 * s, -22 * s), (10 * s, 13 * s), (-1e4, 1e4), hu("systemic vein", ph), LABEL["vessel"])  # IVC
    for side in (-1, 1):  # psoas
        c.ellipsoid((160 * s, 72 * s, side * 42 * s), (150 * s, 18 * s, 22 * s), 55.0, LABEL["muscle"], within=(LABEL["cavity"],))
    # colon and small-bowel loops in the lower abdomen
    for yx in ((0, -112), (25, 112)):
        c.cylinder((yx[0] * s, yx[1] * s), (18 * s, 18 * s), (-20 * s, 1e4), hu("bowel wall", ph), LABEL["bowel"], within=(LABEL["cavity"],))
        c.cylinder((yx[0] * s, yx[1] * s), (12 * s, 12 * s), (-20 * s, 1e4), hu("air", ph), LABEL["bowel"], within=(LABEL["bowel"],))
    rng = np.random.default_rng(case.seed + 7)
    for _ in range(40):
        center = (rng.uniform(-5, 150) * s, rng.uniform(-85, 45) * s, rng.uniform(-90, 90) * s)
        radii = (rng.uniform(12, 18) * s, rng.uniform(10, 14) * s, rng.uniform(14, 24) * s)
        c.ellipsoid(center, radii, hu("bowel wall", ph), LABEL["bowel"], within=(LABEL["cavity"],))
        c.ellipsoid(center, tuple(r * 0.55 for r in radii), hu("fluid", ph) + 12, LABEL["bowel"], within=(LABEL["bowel"],))
    _spine(c, s, 84, (-1e4, 1e4), body_r=19)


def build_head(c: Canvas, case: PhantomCase) -> None:
    s, ph = case.scale, case.phase
    c.ellipsoid((-8 * s, 0, 0), (100 * s, 102 * s, 80 * s), hu("skin", ph), LABEL["body"])
    c.ellipsoid((-8 * s, 0, 0), (96 * s, 98 * s, 76 * s), hu("cortical bone", ph), LABEL["bone"])
    # face and skull base below the brain
    c.ellipsoid((80 * s, -40 * s, 0), (38 * s, 62 * s, 60 * s), hu("skin", ph), LABEL["body"])
    c.ellipsoid((62 * s, 10 * s, 0), (10 * s, 70 * s, 62 * s), 700.0, LABEL["bone"])
    for side in (-1, 1):
        c.ellipsoid((85 * s, -58 * s, side * 26 * s), (18 * s, 16 * s, 13 * s), hu("air", ph), LABEL["airway"])  # maxillary sinus
        c.ellipsoid((38 * s, -72 * s, side * 32 * s), (16 * s, 17 * s, 16 * s), hu("fat", ph), LABEL["body"])  # orbit
        c.ellipsoid((38 * s, -78 * s, side * 32 * s), (11 * s, 11 * s, 11 * s), 12.0, LABEL["body"])  # globe
    c.ellipsoid((85 * s, -62 * s, 0), (20 * s, 14 * s, 6 * s), hu("air", ph), LABEL["airway"])  # nasal cavity
    # brain: grey matter shell, white matter core, posterior fossa and brainstem
    c.ellipsoid((-18 * s, 0, 0), (80 * s, 90 * s, 69 * s), hu("grey matter", ph), LABEL["brain"])
    c.ellipsoid((-20 * s, 0, 0), (62 * s, 72 * s, 52 * s), hu("white matter", ph), LABEL["brain"])
    c.ellipsoid((55 * s, 48 * s, 0), (26 * s, 34 * s, 52 * s), hu("grey matter", ph), LABEL["brain"])
    c.cylinder((18 * s, 0), (13 * s, 13 * s), (20 * s, 110 * s), hu("white matter", ph) + 5, LABEL["brain"])
    big = _enlargement(case, "lateral ventricles")
    g = 1.9 if big else 1.0
    for side in (-1, 1):
        c.ellipsoid((-22 * s, -2 * s, side * (10 + 4 * (g - 1)) * s), (24 * s * (1 + 0.3 * (g - 1)), 38 * s, 7 * s * g),
                    hu("csf", ph), LABEL["ventricles"])
    c.ellipsoid((8 * s, 0, 0), (14 * s, 14 * s, 3 * s * g), hu("csf", ph), LABEL["ventricles"])
    # arteries (internal carotids, basilar, middle cerebral) and the venous sinuses
    for side in (-1, 1):
        c.cylinder((-6 * s, side * 22 * s), (3.5 * s, 3.5 * s), (22 * s, 70 * s), hu("artery", ph), LABEL["vessel"])
        c.ellipsoid((22 * s, -6 * s, side * 38 * s), (3 * s, 3 * s, 18 * s), hu("artery", ph), LABEL["vessel"])
    c.cylinder((24 * s, 0), (3 * s, 3 * s), (22 * s, 80 * s), hu("artery", ph), LABEL["vessel"])
    c.ellipsoid((28 * s, 86 * s, 0), (9 * s, 6 * s, 9 * s), hu("systemic vein", ph) + 20, LABEL["vessel"])
    c.ellipsoid((-96 * s + 14 * s, 20 * s, 0), (5 * s, 60 * s, 5 * s), hu("systemic vein", ph) + 20, LABEL["vessel"],
                within=(LABEL["brain"],))


BUILDERS = {"head": build_head, "chest": build_chest, "abdomen": build_abdomen}
