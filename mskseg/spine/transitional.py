"""Transitional anatomy: targeted checks of the CT around the learned level centres.

Six lumbar-type vertebrae, a sacralised L5, or 11 or 13 rib pairs are looked for by
:func:`transitional_findings` around the level centres of the learned detector, which are numbered from the
top and stay right in these variants. Ribs: bone beside T11, T12 and L1 (smoothed HU above 250, beyond 30 mm
from the midline, medial end within 36 mm, not entering from above) and how far it reaches laterally: T11 with
a rib and nothing beyond 38 mm at T12 is "11 rib pairs"; bone reaching 38 mm on both sides of L1 (or 42 mm on
one side when the rule-based last-rib anchor is also on L1) while T12 carries ribs is "13 rib pairs". Sacrum:
the bone fraction 32-52 mm beside the vertebral body, where sacral alae lie and a lumbar vertebra has psoas:
alae at L5 are "sacralised L5"; a vertebral body without alae one vertebra (the L4-L5 distance) below L5 is
"six lumbar-type vertebrae". The vertebral body at each level is found from the cortical ring
(:func:`body_y`: bone closed over its gaps, holes of cancellous density filled, posterior elements opened
away, the blob with the largest inscribed circle near the spine, preferring the posterior one over the aorta);
a level where it is missing or off the line of its neighbours takes their median. The thresholds scale down
with the bone density measured at the body centres; below 120 HU the rib checks do not run (faint ribs were
missed and T12 looked rib-less), below 70 HU absent alae are not concluded. A check runs only where its
vertebrae are in the field of view and a vertebral body is found; otherwise it says nothing.

A finding is a disagreement between the count from the top (the last rib-bearing vertebra is T12) and the count
from the bottom (the vertebra above the sacrum is L5), and an abdominal CT shows neither T1 nor, often, the
sacrum: the detector's names then rest on the shape of the spine. So each candidate is reported only when the
anchor on the other side confirms the names (:func:`count_anchors`, :func:`confirmed_findings`): rib findings
need sacral alae right below the named L5, sacral findings the last rib on the named T12. Rib reaches are
measured only where the image extends RIB_VIEW_MM beside the spine, and only for vertebrae wholly in view; on
low-density bone they are measured for the anchor only.

The thresholds were chosen on synthetic torsos; real transitional anatomy has not been tested (see the
detector's model card and the README), and on low-density bone the rib checks are off, so an absent flag is
not proof of normal anatomy. :func:`anchor_findings` reports where the rule-based anchors
(:mod:`mskseg.spine.rules`) fall on the learned levels; it does not flag anything.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from scipy import ndimage

from ..image import Image
from .geometry import BoneProjections, Canonical, bone_projections, canonical, vertebra_height
from .levelnet import LEVEL_INDEX
from .rules import RuleLevels


def anchor_findings(levels_mm: dict[str, float], rules: RuleLevels) -> list[str]:
    """Transitional anatomy from the rule-based anchors placed on the learned levels.

    The last rib-bearing vertebra should be T12 and the top of the sacrum about half a vertebra below the centre
    of L5. A last rib at T11 or L1, a sacrum 1.5 vertebrae below L5 (a sixth lumbar-type vertebra) or at L5
    (sacralised L5) is reported.
    """
    findings: list[str] = []
    height = vertebra_height(levels_mm)
    if rules.last_rib_mm is not None:
        near = [(abs(z - rules.last_rib_mm), n) for n, z in levels_mm.items() if n in ("T10", "T11", "T12", "L1", "L2")]
        if near:
            dist, name = min(near)
            # only the known variants (11 or 13 rib pairs); a last rib two levels away is a failed rule, not anatomy
            if dist < 0.35 * height and name in ("T11", "L1"):
                pairs = {"T11": 11, "L1": 13}[name]
                findings.append(f"the last rib-bearing vertebra is {name}: {pairs} rib pairs")
    if rules.sacrum_top_mm is not None and "L5" in levels_mm:
        relative = (rules.sacrum_top_mm - levels_mm["L5"]) / height
        if relative < -0.95:
            findings.append("a sixth lumbar-type vertebra between L5 and the sacrum")
        elif relative > 0.35:
            findings.append("L5 joins the sacrum (sacralised L5)")
    return findings


#: Rib checks (mm from the vertebral body's midline): a rib's medial end lies within RIB_MEDIAL_MM, beyond the
#: base of the transverse process (RIB_CUT_MM); a thoracic rib reaches beyond RIB_REACH_MM, a lumbar transverse
#: process of L1 stops short of LUMBAR_RIB_MIN_MM, a lumbar (13th) rib stub reaches it on both sides.
RIB_HU = 250.0
RIB_CUT_MM = 30.0
RIB_MEDIAL_MM = 36.0
RIB_REACH_MM = 48.0
#: T12 "carries ribs" for the 13-pair check when its bone reaches T12_RIB_MM; it "carries none" for the 11-pair
#: check only when nothing reaches NO_RIB_MM (short 12th ribs of normal anatomy reach 42 mm on held-out torsos,
#: the transverse processes of a rib-less T12 at most 36 mm).
T12_RIB_MM = 45.0
#: Rib reaches are measured only where the image extends this far (mm) either side of the midline: in a crop
#: that ends beside the spine a transverse process and a rib cut by the edge look alike.
RIB_VIEW_MM = 90.0
NO_RIB_MM = 38.0
LUMBAR_RIB_MIN_MM = 38.0
LUMBAR_RIB_MAX_MM = 42.0
#: Sacral checks: bone fraction (HU above ALA_HU) beside the vertebral body (32-52 mm from its midline, within
#: 12 mm of its antero-posterior centre), where sacral alae lie and a lumbar vertebra has only psoas.
ALA_HU = 150.0
ALA_FUSED = 0.3  # at L5: alae (sacralised L5)
ALA_ABSENT = 0.2  # one vertebra below L5: no alae (a mobile sixth lumbar vertebra instead of S1)
#: Vertebral body finding (:func:`_body_y`): bone threshold and closing of its cortex, the least mean HU of its
#: enclosed interior, the opening that removes the posterior elements, the search window around the spine
#: (mm from the projections' spine position: x either side, y anterior..posterior) and the least inscribed radius.
BODY_BONE_HU = 150.0
BODY_CLOSE_MM = 3.0
BODY_INTERIOR_HU = 40.0
BODY_OPEN_MM = 3.0
BODY_REACH_MM = 50.0  # a hole pixel has bone within this distance on all four sides (row and column)
BODY_OUTLIER_MM = 10.0  # a level's body further than this from the median of its neighbours takes that median
BODY_WINDOW_X_MM = 20.0
BODY_WINDOW_Y_MM = (-55.0, 15.0)
MIN_BODY_RADIUS_MM = 8.0
BODY_POSTERIOR_BONUS = 0.15  # candidates: inscribed radius (mm) + this x y (mm, posterior positive), largest wins
#: Bone density (median HU of the body centres T12..L4): below DENSITY_REF_HU, RIB_HU and ALA_HU are scaled down
#: in proportion (not below RIB_MIN_HU, ALA_MIN_HU); below RIB_MIN_DENSITY_HU the rib checks do not run (faint
#: ribs are not seen at any threshold that stays clear of soft tissue, and T12 then looks rib-less).
DENSITY_REF_HU = 150.0
RIB_MIN_HU = 150.0
ALA_MIN_HU = 100.0
RIB_MIN_DENSITY_HU = 120.0
ALA_ABSENT_MIN_DENSITY_HU = 70.0  # below it "no alae below L5" is not concluded (faint alae look absent)


def _local_block(can: Canonical, z0: float, z1: float, cx: float, cy: float, half_x: float, y0: float,
                 y1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Smoothed HU (about 2 x 2 x 3 mm box mean) of the slices z0..z1 around (cx, cy) mm, with x and y offsets."""
    sx, sy, sz = can.spacing
    ks = np.nonzero((can.z_mm >= z0) & (can.z_mm <= z1))[0]
    if len(ks) == 0:
        return None
    nz, ny, nx = can.array.shape
    i0, i1 = max(0, int((cx - half_x) / sx)), min(nx, int((cx + half_x) / sx) + 1)
    j0, j1 = max(0, int((cy + y0) / sy)), min(ny, int((cy + y1) / sy) + 1)
    if i1 - i0 < 3 or j1 - j0 < 3:
        return None
    sub = np.asarray(can.array[ks.min(): ks.max() + 1, j0:j1, i0:i1], np.float32)
    size = (max(1, int(round(3.0 / abs(sz)))), max(1, int(round(2.0 / sy))), max(1, int(round(2.0 / sx))))
    sub = ndimage.uniform_filter(sub, size=size, mode="nearest")
    return sub, np.arange(i0, i1) * sx - cx, np.arange(j0, j1) * sy - cy


def _disk(ry: int, rx: int) -> np.ndarray:
    """Elliptical structuring element with half-axes ry, rx pixels."""
    yy, xx = np.mgrid[-ry:ry + 1, -rx:rx + 1]
    return (yy / max(ry, 1)) ** 2 + (xx / max(rx, 1)) ** 2 <= 1.0 + 1e-6


def _enclosed(mask: np.ndarray, reach_y: int, reach_x: int) -> np.ndarray:
    """Pixels off ``mask`` that have mask pixels within reach (pixels) on all four sides along their row and
    column: the inside of a ring even where the ring has gaps (a gap only opens the line of pixels through it)."""
    out = ~mask
    for axis, reach in ((0, reach_y), (1, reach_x)):
        pos = np.arange(mask.shape[axis], dtype=float).reshape((-1, 1) if axis == 0 else (1, -1))
        pos = np.broadcast_to(pos, mask.shape)
        before = np.maximum.accumulate(np.where(mask, pos, -np.inf), axis=axis)
        after = np.flip(np.minimum.accumulate(np.flip(np.where(mask, pos, np.inf), axis), axis=axis), axis)
        out &= (pos - before <= reach) & (after - pos <= reach)
    return out


def body_y(can: Canonical, z: float, half: float, cx: float, cy: float) -> tuple[float, float] | None:
    """(antero-posterior centre y (mm), inscribed radius (mm)) of the vertebral body at z; None when not found.

    The slices z +- half around the spine: bone (BODY_BONE_HU in any of them) closed over BODY_CLOSE_MM (a thin
    or osteoporotic cortex shows as a broken ring), its enclosed holes filled where their mean HU is above
    BODY_INTERIOR_HU (cancellous bone, even of low density; not the spinal canal), thin parts opened away
    (BODY_OPEN_MM: pedicles, laminae, transverse processes). Each remaining blob whose largest inscribed circle
    (distance transform) has its centre within BODY_WINDOW_X_MM of the spine's column and BODY_WINDOW_Y_MM of
    its antero-posterior position is a candidate if that radius is at least MIN_BODY_RADIUS_MM; the body is the
    candidate with the largest radius, with a bonus for lying further back (BODY_POSTERIOR_BONUS: the aorta, the
    inferior vena cava and bowel contrast lie in front of it). Its centre is that of the inscribed circle.
    """
    block = _local_block(can, z - half, z + half, cx, cy, 45.0, -90.0, 60.0)
    if block is None:
        return None
    sub, dx, dy = block
    sx, sy = can.spacing[0], can.spacing[1]
    bone = ndimage.binary_closing((sub > BODY_BONE_HU).any(axis=0),
                                  _disk(max(1, round(BODY_CLOSE_MM / sy)), max(1, round(BODY_CLOSE_MM / sx))))
    holes = (ndimage.binary_fill_holes(bone) | _enclosed(bone, round(BODY_REACH_MM / sy),
                                                         round(BODY_REACH_MM / sx))) & ~bone
    lab, n = ndimage.label(holes)
    means = np.asarray(ndimage.mean(sub.mean(axis=0), lab, range(1, n + 1)))
    inside = np.isin(lab, 1 + np.nonzero(means > BODY_INTERIOR_HU)[0])
    body = ndimage.binary_closing(bone | inside, _disk(1, 1))  # the lines through the cortex's gaps
    body = ndimage.binary_opening(body, _disk(max(1, round(BODY_OPEN_MM / sy)), max(1, round(BODY_OPEN_MM / sx))))
    dist = ndimage.distance_transform_edt(body, sampling=(sy, sx))
    window = (np.abs(dx) <= BODY_WINDOW_X_MM)[None, :] &\
        ((dy >= BODY_WINDOW_Y_MM[0]) & (dy <= BODY_WINDOW_Y_MM[1]))[:, None]
    dist = np.where(window, dist, 0.0)
    lab, n = ndimage.label(body)
    best: tuple[float, float, float] | None = None
    for value in range(1, n + 1):
        d = np.where(lab == value, dist, 0.0)
        radius = float(d.max())
        if radius < MIN_BODY_RADIUS_MM:
            continue
        j = int(np.unravel_index(int(np.argmax(d)), d.shape)[0])
        score = radius + BODY_POSTERIOR_BONUS * float(dy[j])
        if best is None or score > best[0]:
            best = (score, cy + float(dy[j]), radius)
    return None if best is None else (best[1], best[2])


def _rib_reach(can: Canonical, z: float, height: float, cx: float, yb: float,
               rib_hu: float = RIB_HU) -> tuple[float, float] | None:
    """How far (mm from the midline, left and right) bone attached beside the vertebra at z reaches laterally.

    Bone above ``rib_hu`` (RIB_HU, lower for low bone density) in the slices from 0.35 vertebra below to 0.5
    above the body centre (ribs attach to the upper half of their vertebra), behind the body's front half,
    beyond RIB_CUT_MM from the midline (the vertebra's own pedicles cut off); 3D components whose medial end is
    within RIB_MEDIAL_MM (a rib neck or a transverse process, not a rib of the vertebra above descending past)
    and that do not enter through the top of the slab (a rib from above). 0 on a side without such bone.
    """
    block = _local_block(can, z - 0.35 * height, z + 0.5 * height, cx, yb, 150.0, -10.0, 90.0)
    if block is None:
        return None
    sub, dx, _ = block
    if dx.min() > -RIB_VIEW_MM or dx.max() < RIB_VIEW_MM:
        return None  # the image ends beside the spine (a crop): how far bone reaches is not seen
    lab, n = ndimage.label((sub > rib_hu) & (np.abs(dx) >= RIB_CUT_MM)[None, None, :])
    reach = {1: 0.0, -1: 0.0}
    for value, sl in enumerate(ndimage.find_objects(lab) if n else [], start=1):
        if sl is None:
            continue
        zz, _, ii = np.nonzero(lab[sl] == value)
        if zz.max() + sl[0].start >= lab.shape[0] - 1:
            continue
        x = dx[ii + sl[2].start]
        a = np.abs(x)
        if a.min() <= RIB_MEDIAL_MM:
            side = 1 if np.median(x) > 0 else -1
            reach[side] = max(reach[side], float(a.max()))
    return reach[1], reach[-1]


def _ala_fraction(can: Canonical, z0: float, z1: float, cx: float, yb: float,
                  ala_hu: float = ALA_HU) -> float | None:
    """Bone fraction beside the vertebral body (the smaller of the two sides), where sacral alae lie."""
    block = _local_block(can, z0, z1, cx, yb, 60.0, -12.0, 12.0)
    if block is None:
        return None
    sub, dx, _ = block
    a = np.abs(dx)
    band = (a >= 32.0) & (a <= 52.0)
    if not (band & (dx > 0)).any() or not (band & (dx < 0)).any():
        return None
    left = float((sub[:, :, band & (dx > 0)] > ala_hu).mean())
    right = float((sub[:, :, band & (dx < 0)] > ala_hu).mean())
    return min(left, right)


def transitional_findings(image: Image, levels_mm: dict[str, float], proj: BoneProjections | None = None,
                          last_rib_mm: float | None = None,
                          sacrum_top_mm: float | None = None) -> tuple[list[str], dict[str, Any]]:
    """Look for transitional anatomy in the CT around the given level centres (numbered from the top).

    The vertebral body at every level is found by :func:`_body_y` (a level where it is missing or off the line
    of its neighbours takes their median) and the bone density measured at the body centres; RIB_HU and ALA_HU
    are scaled down for low density, the rib checks are skipped below RIB_MIN_DENSITY_HU and absent alae not
    concluded below ALA_ABSENT_MIN_DENSITY_HU. Checks, each only where its vertebrae are wholly in the field of
    view (and a body was found):

    * 11 rib pairs: T11 carries a rib (bone beside it reaching beyond RIB_REACH_MM) and T12 none (nothing beyond
      NO_RIB_MM on either side);
    * 13 rib pairs: L1 carries rib stubs on both sides (bone attached beside it reaching at least
      LUMBAR_RIB_MIN_MM on both sides and LUMBAR_RIB_MAX_MM on one; an L1 transverse process is shorter) while
      T12 carries ribs; or a stub on one side only (LUMBAR_RIB_MAX_MM) when the rule-based last-rib anchor
      (``last_rib_mm``, from :func:`rule_based_levels`) also lies on L1 (two weak signs that agree);
    * sacralised L5: sacral-type alae beside the body of L5 (bone fraction >= ALA_FUSED in the alar band);
    * six lumbar-type vertebrae: one vertebra below L5 (the L4-L5 distance) there is a vertebral body but no
      alae (bone fraction < ALA_ABSENT): a mobile sixth lumbar vertebra where S1 should be.

    A finding is a disagreement between the count from the top (the last rib-bearing vertebra is T12) and the
    count from the bottom (the vertebra above the sacrum is L5), so it is reported only when the anchor on the
    other side confirms the detector's numbering (:func:`count_anchors`): a rib finding only when the sacrum lies
    right below the named L5, a sacral finding only when the last rib lies on the named T12. Without that,
    a rib-bearing "L1" is as well explained by names one level too high as by a 13th rib, and a mobile
    vertebra below "L5" by names one level too low; such candidates are kept in
    ``measurements["unconfirmed"]`` with the reason, not reported.

    Returns:
        ``(findings, measurements)``: sentences naming what was seen (empty when nothing is transitional or the
        evidence is not clear) and the numbers behind them; ``measurements["anchors"]`` says which anchors were
        seen and where (:func:`count_anchors`).
    """
    can = canonical(image)
    proj = proj if proj is not None else bone_projections(image)
    cx, cy = proj.spine_x_mm, proj.spine_y_mm
    z_lo, z_hi = float(can.z_mm.min()), float(can.z_mm.max())
    height = vertebra_height(levels_mm)
    measured: dict[str, Any] = {}
    findings: list[str] = []

    def body(z: float, half: float) -> float | None:
        found = body_y(can, z, half, cx, cy)
        return None if found is None else found[0]

    # the body at every level in the field of view; a level where it was not found, or found more than
    # BODY_OUTLIER_MM from the median of its neighbours (two levels either side), takes that median
    own = {n: body(z, 0.15 * height) for n, z in levels_mm.items() if z_lo <= z <= z_hi}

    def body_at(name: str) -> float | None:
        i = LEVEL_INDEX[name]
        near = [y for n, y in own.items() if y is not None and 0 < abs(LEVEL_INDEX[n] - i) <= 2]
        if len(near) >= 2:
            ref = float(np.median(near))
            if own.get(name) is None or abs(own[name] - ref) > BODY_OUTLIER_MM:  # type: ignore[operator]
                return ref
        return own.get(name)

    # bone density: median HU of the centre (+- 6 mm) of the bodies T12..L4; thresholds scale down with it
    cores = []
    for name in ("T12", "L1", "L2", "L3", "L4"):
        y = own.get(name)
        if y is not None:
            block = _local_block(can, levels_mm[name] - 0.15 * height, levels_mm[name] + 0.15 * height, cx, y,
                                 6.0, -6.0, 6.0)
            if block is not None:
                cores.append(float(np.median(block[0])))
    density = float(np.median(cores)) if cores else None
    measured["body_density_hu"] = None if density is None else round(density, 1)
    rib_candidates: list[str] = []
    sacral_candidates: list[str] = []
    if density is not None:
        scale = min(1.0, density / DENSITY_REF_HU)
        rib_hu, ala_hu = max(RIB_MIN_HU, RIB_HU * scale), max(ALA_MIN_HU, ALA_HU * scale)
        if density >= RIB_MIN_DENSITY_HU:
            rib_candidates = _rib_findings(can, levels_mm, height, cx, body_at, rib_hu, last_rib_mm, measured)
        else:  # faint ribs may be missed: the reaches are measured for the anchor (ribs seen), never to flag
            measured["rib_reach_low_density"] = True
            _rib_findings(can, levels_mm, height, cx, body_at, rib_hu, last_rib_mm, measured)
        sacral_candidates = _sacral_findings(can, levels_mm, cx, body, body_at, ala_hu, density, measured)
    anchors = count_anchors(levels_mm, measured, last_rib_mm, sacrum_top_mm)
    measured["anchors"] = anchors
    confirmed, unconfirmed = confirmed_findings(rib_candidates, sacral_candidates, anchors)
    findings += confirmed
    if unconfirmed:
        measured["unconfirmed"] = unconfirmed
    return findings, measured


def confirmed_findings(rib_candidates: list[str], sacral_candidates: list[str],
                       anchors: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The candidate findings the other anchor confirms, and the others with why they are not reported.

    A rib finding (11 or 13 rib pairs) needs the sacrum right below the named L5 (the lumbar names confirmed
    from the bottom); a sacral finding (sacralised L5, six lumbar-type vertebrae) needs the last rib on the
    named T12 (the names confirmed from the top).
    """
    findings: list[str] = []
    unconfirmed: list[str] = []
    for finding in rib_candidates:
        if (anchors.get("sacrum") or {}).get("at") == "S1":
            findings.append(finding)
        else:
            unconfirmed.append(f"{finding} (not reported: no sacrum seen right below L5 to confirm the lumbar "
                               "numbering)")
    for finding in sacral_candidates:
        if (anchors.get("last_rib") or {}).get("at") == "T12":
            findings.append(finding)
        else:
            unconfirmed.append(f"{finding} (not reported: no last rib seen on T12 to confirm the numbering "
                               "from above)")
    return findings, unconfirmed


def count_anchors(levels_mm: dict[str, float], measured: dict[str, Any], last_rib_mm: float | None = None,
                  sacrum_top_mm: float | None = None) -> dict[str, dict[str, Any]]:
    """Where the two anchors of the vertebral count lie on the named levels, from what the CT shows.

    * The last rib-bearing vertebra (the count from the top: it is T12 in typical anatomy): the rule-based
      last-rib anchor (``last_rib_mm``: a bone of at least 45 mm running laterally from beside the spine, with
      cortical bone, not cut by the top of the field of view) when it lies on the named T11, T12 or L1 (within
      0.35 vertebra; elsewhere it is a failed rule, not a rib); else the rib reaches measured beside T11, T12 and
      L1 (``measured["rib_reach_*"]``) when they are clear: ribs (beyond T12_RIB_MM) on one vertebra and no
      rib pair on the one below (nothing beyond NO_RIB_MM on at least one side). On low-density bone (reaches
      measured for the anchor only) only ribs on T12 and none on L1 count: a faint rib missed looks like none.
    * The sacrum (the count from the bottom: the vertebra above it is L5): sacral alae (bone fraction at least
      ALA_FUSED in the alar band) one vertebra below the named L5 (``"S1"``: the count from the bottom agrees)
      or beside the named L5 (``"L5"``); else the rule-based top of the sacrum (``sacrum_top_mm``) placed
      on the named L5.

    A partly seen anchor is not evidence: the rib and ala measurements exist only for vertebrae wholly in the
    field of view.

    Returns:
        ``{"last_rib": {"seen", "at", "from"}, "sacrum": {"seen", "at", "from"}}``: ``at`` the named level the
        anchor falls on (``"T11"``, ``"T12"``, ``"L1"`` for the last rib; ``"S1"`` = right below L5, ``"L5"``,
        ``"below S1"`` for the sacrum) or None when it was not seen or not placed; ``from`` what showed it.
    """
    height = vertebra_height(levels_mm)
    rib: dict[str, Any] = {"seen": False, "at": None, "from": None}
    if last_rib_mm is not None:
        near = [(abs(z - last_rib_mm), n) for n, z in levels_mm.items() if n in ("T11", "T12", "L1")]
        if near and min(near)[0] < 0.35 * height:
            rib.update(seen=True, at=min(near)[1], **{"from": "rule-based last rib"})
    if rib["at"] is None:
        reach = {n: measured.get(f"rib_reach_{n}_mm") for n in ("T11", "T12", "L1")}

        def ribs(name: str) -> bool:
            return reach[name] is not None and max(reach[name]) >= T12_RIB_MM

        def none(name: str) -> bool:  # no rib pair: on one side at least nothing beyond a transverse process
            return reach[name] is not None and min(reach[name]) < NO_RIB_MM

        # on low-density bone a missed rib looks like none: only ribs seen on T12 and none on L1 anchor there
        pairs = (("T12", "L1"),) if measured.get("rib_reach_low_density") else (("T12", "L1"), ("T11", "T12"))
        for upper, lower in pairs:
            if ribs(upper) and none(lower):
                rib.update(seen=True, at=upper, **{"from": "rib reach"})
                break
    sacrum: dict[str, Any] = {"seen": False, "at": None, "from": None}
    at_l5, below = measured.get("ala_fraction_L5"), measured.get("ala_fraction_below_L5")
    if at_l5 is not None and at_l5 >= ALA_FUSED:
        sacrum.update(seen=True, at="L5", **{"from": "sacral alae"})
    elif below is not None and below >= ALA_FUSED:
        sacrum.update(seen=True, at="S1", **{"from": "sacral alae"})
    elif sacrum_top_mm is not None:
        sacrum.update(seen=True, **{"from": "rule-based sacrum"})
        if "L5" in levels_mm:
            relative = (sacrum_top_mm - levels_mm["L5"]) / height
            sacrum["at"] = "below S1" if relative < -0.95 else "L5" if relative > 0.35 else "S1"
    return {"last_rib": rib, "sacrum": sacrum}


def _rib_findings(can: Canonical, levels_mm: dict[str, float], height: float, cx: float,
                  body_at: Callable[[str], float | None], rib_hu: float, last_rib_mm: float | None,
                  measured: dict[str, Any]) -> list[str]:
    """11 or 13 rib pairs from how far bone beside T11, T12 and L1 reaches (adds the reaches to ``measured``)."""
    findings: list[str] = []
    z_lo, z_hi = float(can.z_mm.min()), float(can.z_mm.max())
    reach: dict[str, tuple[float, float]] = {}
    for name in ("T11", "T12", "L1"):
        z = levels_mm.get(name)
        if z is None or z - 0.35 * height < z_lo or z + 0.5 * height > z_hi:
            continue
        yb = body_at(name)
        r = _rib_reach(can, z, height, cx, yb, rib_hu) if yb is not None else None
        if r is not None:
            reach[name] = r
            measured[f"rib_reach_{name}_mm"] = [round(r[0], 1), round(r[1], 1)]
    if "T11" in reach and "T12" in reach and max(reach["T11"]) >= RIB_REACH_MM and max(reach["T12"]) < NO_RIB_MM:
        findings.append("11 rib pairs: T12 carries no ribs")
    if "L1" in reach and "T12" in reach and max(reach["T12"]) >= T12_RIB_MM\
            and max(reach["L1"]) >= LUMBAR_RIB_MAX_MM:
        anchor_on_l1 = last_rib_mm is not None and abs(last_rib_mm - levels_mm["L1"]) < 0.35 * height
        if min(reach["L1"]) >= LUMBAR_RIB_MIN_MM or anchor_on_l1:
            findings.append("13 rib pairs: L1 carries ribs")
    return findings


def _sacral_findings(can: Canonical, levels_mm: dict[str, float], cx: float,
                     body: Callable[[float, float], float | None], body_at: Callable[[str], float | None], ala_hu: float, density: float,
                     measured: dict[str, Any]) -> list[str]:
    """Sacralised L5 (alae beside L5) or six lumbar-type vertebrae (a body without alae one vertebra below L5)."""
    findings: list[str] = []
    z_lo, z_hi = float(can.z_mm.min()), float(can.z_mm.max())
    if "L5" in levels_mm and "L4" in levels_mm:
        gap = levels_mm["L4"] - levels_mm["L5"]
        z5 = levels_mm["L5"]
        if gap > 10.0 and z5 - 0.2 * gap >= z_lo and z5 + 0.1 * gap <= z_hi:
            yb = body_at("L5")
            fused = _ala_fraction(can, z5 - 0.2 * gap, z5 + 0.1 * gap, cx, yb, ala_hu) if yb is not None else None
            if fused is not None:
                measured["ala_fraction_L5"] = round(fused, 3)
                if fused >= ALA_FUSED:
                    findings.append("sacralised L5: L5 has sacral-type alae joined to the sacrum")
        z6 = z5 - gap
        if gap > 10.0 and z6 - 0.2 * gap >= z_lo:
            yb = body(z6, 0.15 * gap)
            below = _ala_fraction(can, z6 - 0.2 * gap, z6 + 0.1 * gap, cx, yb, ala_hu) if yb is not None else None
            if below is not None:
                measured["ala_fraction_below_L5"] = round(below, 3)
                if below < ALA_ABSENT and density >= ALA_ABSENT_MIN_DENSITY_HU\
                        and not any(f.startswith("sacralised") for f in findings):
                    findings.append("six lumbar-type vertebrae: a mobile vertebra without sacral alae lies "
                                    "between L5 and the sacrum")
    return findings
