#!/usr/bin/env python
"""The real-data harness of SarcopeniaSeg: the whole path (read, level, tissues, muscle groups, measure) on every
real CT in ``../shared/data``, one table and one montage of every measured slice.

Every tissue model or rule change is judged here, on the numbers AND on the pictures, before it is kept.
What each real case can tell (none has muscle or fat masks):

* ``ircad-abdomen-ct17`` (portal venous, T10-L4; expert masks): the tissue step at every lumbar level found;
  the share of liver, vessel and bone voxels called muscle or fat; tissue outside the skin mask; whether the
  left and right psoas are there (muscle-group label).
* ``ct-dicom-t12`` (contrast, T11/T12, 20 slices; TotalSegmentator output): every slice; paraspinal Dice (our
  paraspinal group against its autochthon labels); organ voxels (liver, spleen, kidneys, stomach, pancreas,
  bowel, vessels) called muscle or fat; the levels found against its vertebra labels.
* ``verse-crops`` (stored sagittally, vertebra masks): the levels found against the masks (mm along the body
  axis); L3 refused where the crop holds no L3.
* ``dcmqi-ct3slice`` (3 slices, liver label): liver voxels called muscle or fat on the middle slice.

Outputs in ``--out``: ``real_eval.csv`` (a row per case and measured slice), ``real_levels.csv`` (a row per
case and level), ``montage.png`` (each measured slice: CT, tissues, reference structures outlined in cyan) and
the printed summary. Method: ``--method rules|network|auto`` (as ``mskseg sarcopenia``), ``--model CARD``.

    python scripts/evaluate_real.py --out /tmp/real-rules --method rules
    python scripts/evaluate_real.py --out /tmp/real-network --method network
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MUSCLE, SAT, VAT, IMAT, PSOAS, PARASPINAL, WALL = 1, 2, 3, 4, 5, 6, 7
MUSCLE_VALUES = (MUSCLE, PSOAS, PARASPINAL, WALL)
FAT_VALUES = (SAT, VAT, IMAT)
#: TotalSegmentator "total" v2 ids of ct-dicom-t12 (labelmap_total_v2.tsv).
TS_ORGANS = {"liver": [5], "spleen": [1], "kidneys": [2, 3], "stomach": [6], "pancreas": [7],
             "bowel": [18, 19, 20], "vessels": [52, 62, 63, 64]}
TS_AUTOCHTHON, TS_ILIOPSOAS = [86, 87], [88, 89]
TS_VERTEBRAE = {"L5": 27, "L4": 28, "L3": 29, "L2": 30, "L1": 31, "T12": 32, "T11": 33, "T10": 34, "T9": 35}
#: VerSe numbering of verse-crops masks.
VERSE_VERTEBRAE = {**{f"T{n}": 7 + n for n in range(1, 13)}, **{f"L{n}": 19 + n for n in range(1, 7)}}


@dataclass
class SliceRow:
    """One measured slice of one case: what the harness counts on it."""

    case: str
    slice_index: int
    level: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaseResult:
    """A case's rows, level rows, montage panels and warnings."""

    name: str
    rows: list[SliceRow] = field(default_factory=list)
    levels: list[dict[str, Any]] = field(default_factory=list)
    panels: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------- the runs
def run_path(image, method: str, model: str | None, level_index: int | None = None, slab: int = 1):
    """The whole sarcopenia path with muscle groups (as ``mskseg sarcopenia --muscle-groups``)."""
    from mskseg.sarcopenia import run_sarcopenia

    return run_sarcopenia(image, method=method, model=model, level_index=level_index, slab=slab,
                          muscle_groups=True, allow_fallback=True)


def canonical(image, *arrays):
    """``image`` and label arrays on its grid, in the canonical orientation (anterior up, left on the right)."""
    from mskseg.orientation import to_canonical

    canon, how = to_canonical(image)
    return canon, [np.asarray(how.to_canonical(a)) for a in arrays]


def share(pred: np.ndarray, ref: np.ndarray, values) -> float:
    """Share of ``ref`` voxels whose prediction is one of ``values`` (NaN when ``ref`` is empty)."""
    n = int(ref.sum())
    return float(np.isin(pred[ref], values).sum()) / n if n else float("nan")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    n = int(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / n if n else float("nan")


def psoas_sides(pred2d: np.ndarray, body2d: np.ndarray, pixel_cm2: float) -> tuple[float, float]:
    """Psoas area (cm2) on the patient's right and left of the body's midline (canonical: left is +i)."""
    cols = np.nonzero(body2d.any(0))[0]
    mid = (cols[0] + cols[-1]) / 2.0 if len(cols) else pred2d.shape[1] / 2.0
    psoas = pred2d == PSOAS
    ii = np.arange(pred2d.shape[1])[None, :]
    return float((psoas & (ii < mid)).sum()) * pixel_cm2, float((psoas & (ii >= mid)).sum()) * pixel_cm2


def level_rows(case: str, result, truth_index: dict[str, float], axial_mm: float) -> list[dict[str, Any]]:
    """Found level slice vs true vertebral-body centre (slice index, along the stored axial axis), in mm."""
    found = dict(getattr(result.l3, "levels", {}) or {}) if result is not None else {}
    rows = []
    for name, true_k in truth_index.items():
        k = found.get(name)
        rows.append({"case": case, "level": name, "true_slice": round(true_k, 1), "found_slice": k,
                     "error_mm": round(abs(k - true_k) * axial_mm, 1) if k is not None else None})
    return rows


def centres(labelmap: np.ndarray, ids: dict[str, int], axis: int) -> dict[str, float]:
    """Centroid slice index along ``axis`` of each present label."""
    out = {}
    for name, value in ids.items():
        where = np.nonzero(labelmap == value)
        if len(where[0]):
            out[name] = float(np.mean(where[axis]))
    return out


def measured(result) -> dict[str, float]:
    row = result.headline_row()
    return {key: row.get(key) for key in ("SMA_cm2", "SAT_cm2", "VAT_cm2", "IMAT_cm2", "SMD_HU")}


# ----------------------------------------------------------------------------------------------- the cases
def case_ircad(data: Path, method: str, model: str | None) -> CaseResult | None:
    from mskseg.io import read_image

    root = data / "ircad-abdomen-ct17"
    if not (root / "dicom").is_dir():
        return None
    out = CaseResult("ircad17")
    image = read_image(root / "dicom")
    masks = {name: np.asarray(read_image(root / "masks" / f"{name}.nii.gz").array) > 0
             for name in ("skin", "bone", "liver", "artery", "portalvein", "venoussystem")}
    masks["vessels"] = masks.pop("artery") | masks.pop("portalvein") | masks.pop("venoussystem")
    auto = run_path(image, method, model)
    out.warnings = list(auto.warnings)
    lumbar = {n: k for n, k in (auto.l3.levels or {}).items() if n in ("T12", "L1", "L2", "L3", "L4", "L5")}
    canon, _ = canonical(image, image.array)
    pixel_cm2 = float(image.spacing[0] * image.spacing[1]) / 100.0
    for name, k in sorted(lumbar.items(), key=lambda t: t[1]):
        result = run_path(image, method, model, level_index=int(k))
        _, arrays = canonical(image, result.labelmap.array, *masks.values())
        pred, refs = arrays[0], dict(zip(masks, arrays[1:]))
        kc = result.canonical.slices[0] if result.canonical is not None else int(k)
        p2, ref2 = pred[kc], {n: m[kc] for n, m in refs.items()}
        right, left = psoas_sides(p2, ref2["skin"], pixel_cm2)
        values = {**measured(result),
                  **{f"{n}_as_muscle": share(p2, ref2[n], MUSCLE_VALUES) for n in ("liver", "vessels", "bone")},
                  **{f"{n}_as_fat": share(p2, ref2[n], FAT_VALUES) for n in ("liver", "vessels", "bone")},
                  "outside_skin_cm2": float(((p2 > 0) & ~ref2["skin"]).sum()) * pixel_cm2,
                  "psoas_right_cm2": right, "psoas_left_cm2": left}
        out.rows.append(SliceRow(out.name, int(k), f"{name} ({auto.l3.method})", values))
        outline = ref2["liver"] | ref2["vessels"] | ref2["bone"]
        out.panels.append((canon.array[kc], p2, outline, f"ircad17 {name} k={k}"))
    out.levels.append({"case": out.name, "level": "L3", "true_slice": None,
                       "found_slice": auto.l3.index, "error_mm": None, "confidence": auto.l3.confidence})
    return out


def case_t12(data: Path, method: str, model: str | None) -> CaseResult | None:
    from mskseg.image import labels_on_grid
    from mskseg.io import read_image

    root = data / "ct-dicom-t12"
    if not (root / "dicom").is_dir():
        return None
    out = CaseResult("ct-dicom-t12")
    image = read_image(root / "dicom")
    ts = labels_on_grid(read_image(root / "totalseg_labels.nii.gz"), image)
    n = image.array.shape[0]
    result = run_path(image, method, model, level_index=n // 2, slab=n if n % 2 else n - 1)
    out.warnings = list(result.warnings)
    canon, (pred, tsc) = canonical(image, result.labelmap.array, ts)
    for kc in sorted(result.canonical.slices if result.canonical is not None else result.slices):
        p2, t2 = pred[kc], tsc[kc]
        auto_ref = np.isin(t2, TS_AUTOCHTHON)
        organs = {name: np.isin(t2, ids) for name, ids in TS_ORGANS.items()}
        any_organ = np.isin(t2, sum(TS_ORGANS.values(), []))
        values = {**measured(result), "paraspinal_dice": dice(p2 == PARASPINAL, auto_ref),
                  "organ_as_muscle": share(p2, any_organ, MUSCLE_VALUES), "organ_as_fat": share(p2, any_organ, FAT_VALUES),
                  **{f"{name}_as_tissue": share(p2, m, MUSCLE_VALUES + FAT_VALUES) for name, m in organs.items()}}
        out.rows.append(SliceRow(out.name, kc, "T11/T12 (slab)", values))
        if kc % 5 == 0:
            out.panels.append((canon.array[kc], p2, any_organ | auto_ref, f"ct-dicom-t12 k={kc}"))
    try:
        auto = run_path(image, method, model)
        out.warnings += [f"auto level: {w}" for w in auto.warnings if w not in out.warnings]
    except Exception as error:  # L3 not in view: the expected refusal; the levels come from the detector
        auto = None
        out.warnings.append(f"auto level: {error}")
    truth = centres(tsc, TS_VERTEBRAE, axis=0)
    out.levels += level_rows(out.name, auto, truth, float(image.spacing[2]))
    return out


def case_verse(data: Path, method: str, model: str | None) -> list[CaseResult]:
    from mskseg.io import read_image
    from mskseg.orientation import reorientation_of

    results = []
    for ct in sorted((data / "verse-crops").glob("sub-verse*_ct.nii.gz")):
        name = ct.name.split("_")[0].removeprefix("sub-")
        out = CaseResult(name)
        image = read_image(ct)
        mask = np.asarray(read_image(ct.with_name(ct.name.replace("_ct", "_seg-vert_msk"))).array)
        how = reorientation_of(image)
        truth = centres(mask, VERSE_VERTEBRAE, axis=how.axial_axis)
        axial_mm = float(image.spacing[2 - how.axial_axis])
        try:
            result = run_path(image, method, model)
            out.warnings = list(result.warnings)
            canon, (pred,) = canonical(image, result.labelmap.array)
            kc = result.canonical.slices[0] if result.canonical is not None else result.slices[0]
            out.panels.append((canon.array[kc], pred[kc], np.zeros_like(pred[kc], bool),
                               f"{name} {result.l3.level} k={result.l3.index}"))
            out.rows.append(SliceRow(name, int(result.l3.index), result.l3.level, measured(result)))
        except Exception as error:
            result = None
            out.warnings.append(f"refused: {error}")
        out.levels += level_rows(name, result, truth, axial_mm)
        results.append(out)
    return results


def case_dcmqi(data: Path, method: str, model: str | None) -> CaseResult | None:
    from mskseg.image import labels_on_grid
    from mskseg.io import read_image

    root = data / "dcmqi-ct3slice"
    if not (root / "ct-3slice").is_dir():
        return None
    out = CaseResult("dcmqi-ct3slice")
    image = read_image(root / "ct-3slice")
    liver = labels_on_grid(read_image(root / "segs" / "liver_seg.nrrd"), image) > 0
    result = run_path(image, method, model, level_index=1)
    canon, (pred, liv) = canonical(image, result.labelmap.array, liver)
    kc = result.canonical.slices[0] if result.canonical is not None else 1
    values = {**measured(result), "liver_as_muscle": share(pred[kc], liv[kc], MUSCLE_VALUES),
              "liver_as_fat": share(pred[kc], liv[kc], FAT_VALUES)}
    out.rows.append(SliceRow(out.name, 1, "user", values))
    out.panels.append((canon.array[kc], pred[kc], liv[kc], "dcmqi k=1"))
    return out


# ----------------------------------------------------------------------------------------------- outputs
def write_montage(path: Path, panels: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]]) -> None:
    """Every measured slice: CT (-160..240 HU), tissues in colour, reference structures outlined in cyan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap([(0, 0, 0, 0), (0.85, 0.2, 0.15, 0.5), (0.95, 0.85, 0.2, 0.45), (1.0, 0.5, 0.1, 0.5),
                           (0.2, 0.9, 0.6, 0.8), (0.6, 0.2, 0.9, 0.6), (0.9, 0.2, 0.6, 0.6), (0.4, 0.1, 0.1, 0.6)])
    cols = 4
    rows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 4.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (hu, pred, outline, title) in zip(axes.ravel(), panels):
        ax.imshow(hu, cmap="gray", vmin=-160, vmax=240)
        ax.imshow(pred, cmap=cmap, vmin=0, vmax=7, interpolation="nearest")
        if outline.any():
            ax.contour(outline.astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
        ax.set_title(title, fontsize=9)
    fig.suptitle("red muscle, yellow SAT, orange VAT, green IMAT, purple psoas, pink paraspinal, dark abdominal "
                 "wall; cyan: reference organs / vessels / bone (radiological view)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})


def summarise(results: list[CaseResult]) -> list[str]:
    """The lines the harness prints: per case the means over its slices, its level errors and warnings."""
    lines = []
    for r in results:
        keys = list(dict.fromkeys(k for row in r.rows for k in row.values))
        columns = {k: np.asarray([np.nan if row.values.get(k) is None else row.values[k] for row in r.rows], float)
                   for k in keys}
        means = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in columns.items()}
        cells = ", ".join(f"{k} {v:.3%}" if "_as_" in k else f"{k} {v:.3g}" for k, v in means.items()
                          if np.isfinite(v))
        lines.append(f"{r.name} ({len(r.rows)} slices, {r.seconds:.1f} s): {cells}")
        errors = [f"{row['level']} {row['error_mm']} mm" if row.get("error_mm") is not None else
                  f"{row['level']} not found" for row in r.levels if row.get("true_slice") is not None]
        if errors:
            lines.append(f"  levels vs truth: {', '.join(errors)}")
        for warning in r.warnings:
            lines.append(f"  warning: {warning}")
    return lines


def evaluate(data: Path, out: Path, method: str = "auto", model: str | None = None) -> list[CaseResult]:
    """Run every real case found under ``data``; write the tables and the montage into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results: list[CaseResult] = []
    for make in (case_ircad, case_t12, case_verse, case_dcmqi):
        t0 = time.perf_counter()
        made = make(data, method, model)
        made = made if isinstance(made, list) else [made] if made is not None else []
        for r in made:
            r.seconds = (time.perf_counter() - t0) / len(made)
        results += made
    write_csv(out / "real_eval.csv", [{"case": row.case, "slice": row.slice_index, "level": row.level, **row.values}
                                      for r in results for row in r.rows])
    write_csv(out / "real_levels.csv", [row for r in results for row in r.levels])
    write_montage(out / "montage.png", [p for r in results for p in r.panels])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for real_eval.csv, real_levels.csv, montage.png")
    parser.add_argument("--method", default="auto", choices=("auto", "rules", "network"))
    parser.add_argument("--model", help="tissue model card (file or name) for --method network/auto")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="real data folder")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no real data at {args.data}: nothing to evaluate", file=sys.stderr)
        return 2
    results = evaluate(args.data, args.out, args.method, args.model)
    print(f"method {args.method}" + (f", model {args.model}" if args.model else ""))
    print("\n".join(summarise(results)))
    print(f"\ntables: {args.out / 'real_eval.csv'}, {args.out / 'real_levels.csv'}; pictures: {args.out / 'montage.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
