#!/usr/bin/env python
"""Compare synthetic CT made from real label maps with a real contrast CT series (tissue HU, noise, pictures).

Usage:
    python scripts/realism_check.py --out /tmp/realism [--data ../shared/data] [--samples 3] [--seed 0]

Writes ``OUT/realism.md`` (the table, also printed) and ``OUT/gallery.png`` (real and synthetic slices side by
side, axial and coronal, soft-tissue window -160..240 HU). The real reference is
``ct-dicom-t12/dicom`` with its TotalSegmentator labels; the synthetic volumes come from the label maps of
``totalseg-labelmaps/s0327`` and ``s0328`` around T12, arterial or portal-venous phase, at the real series' voxel size.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mskseg.image import Image  # noqa: E402
from mskseg.synth import realism  # noqa: E402
from mskseg.synth.labelmap_ct import sample_habitus, slab_around, synthesize_ct  # noqa: E402
from mskseg.synth.tissues import sample_scan_params  # noqa: E402

WINDOW = (-160.0, 240.0)


def _read_labelmap(path: Path) -> Image:
    import SimpleITK as sitk

    return Image.from_sitk(sitk.ReadImage(str(path)))


def _coronal_row(hu: np.ndarray, labels: np.ndarray, names: dict[int, str]) -> int:
    """Row j of the coronal view: through the middle of the vertebral bodies (or the image centre)."""
    vert = np.isin(labels, [v for v, n in names.items() if n.startswith("vertebrae_")])
    if vert.any():
        rows = np.nonzero(vert.any(axis=(0, 2)))[0]
        return int(rows[0] + 0.25 * (rows[-1] - rows[0]))
    return hu.shape[1] // 2


def _axial_slice(labels: np.ndarray, names: dict[int, str], level: str) -> int:
    ids = [v for v, n in names.items() if n == level]
    ks = np.nonzero(np.isin(labels, ids).any(axis=(1, 2)))[0]
    return int(ks.mean()) if len(ks) else labels.shape[0] // 2


def _to_display(img: Image, array: np.ndarray) -> np.ndarray:
    """Axial slices shown with anterior up and patient right on the left (radiological convention)."""
    d = img.direction
    out = array
    if d[1, 1] < 0:  # rows run anterior -> posterior after this flip
        out = out[..., ::-1, :]
    if d[0, 0] < 0:  # columns run right -> left after this flip
        out = out[..., :, ::-1]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--samples", type=int, default=3, help="synthetic volumes per label map")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    real_dir = args.data / "ct-dicom-t12"
    real_names = realism.read_names_table(real_dir / "labelmap_total_v2.tsv")
    ct, ct_lab = realism.read_real_reference(real_dir / "dicom", real_dir / "totalseg_labels.nii.gz")
    real_row = realism.measure(ct.array, ct_lab.array, real_names, ct.spacing)

    ts = args.data / "totalseg-labelmaps"
    names = realism.read_names_table(ts / "labelmap_total_v2.tsv")
    rng = np.random.default_rng(args.seed)
    synth_rows, shown, timings = [], [], []
    for subject in ("s0327", "s0328"):
        lab = _read_labelmap(ts / subject / f"{subject}_combined_total_v2.nii.gz")
        crop = slab_around(lab, names, "vertebrae_T12", margin_mm=4.0)
        for n in range(args.samples):
            params = sample_scan_params(rng, phase=str(rng.choice(["arterial", "portal"])), metal=False,
                                        fov_mm=500.0, noise_sd_hu=float(rng.uniform(8.0, 16.0)))
            t = time.perf_counter()
            vol = synthesize_ct(lab, names, rng, params=params, spacing_mm=(*ct.spacing[:2], ct.spacing[2]),
                                habitus=sample_habitus(rng, arms_down=bool(n == 1)), crop=crop)
            timings.append(time.perf_counter() - t)
            synth_rows.append(realism.measure(vol.image.array, vol.labels.array, vol.label_names, vol.image.spacing))
            if n < 2:
                shown.append((f"{subject} #{n} ({params.phase}, noise {params.noise_sd_hu:.0f} HU)", vol))

    table = realism.markdown_table(real_row, synth_rows)
    header = (f"# Realism check: synthetic vs real CT\n\nReal: `{real_dir / 'dicom'}` "
              f"({ct.array.shape[0]} slices, {ct.spacing[0]:.3f} x {ct.spacing[1]:.3f} x {ct.spacing[2]:.1f} mm), "
              f"TotalSegmentator labels. Synthetic: {len(synth_rows)} volumes from s0327/s0328 around T12, "
              f"arterial or portal phase, standard-dose noise (8-16 HU) as the reference, same voxel size; {np.mean(timings):.1f} s per volume "
              f"({vol.image.array.shape[2]}x{vol.image.array.shape[1]}x{vol.image.array.shape[0]} voxels).\n\n")
    text = header + table + "\n"
    (args.out / "realism.md").write_text(text)
    print(text)

    _gallery(args.out / "gallery.png", ct, ct_lab.array, real_names, shown)
    print(f"gallery: {args.out / 'gallery.png'}  ({time.perf_counter() - t0:.0f} s in all)")
    return 0


def _gallery(path: Path, ct: Image, ct_lab: np.ndarray, real_names: dict[int, str], shown: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 1 + len(shown)
    fig, axes = plt.subplots(rows, 2, figsize=(11, 4.2 * rows), gridspec_kw={"width_ratios": [1, 1.3]})
    items = [("real T11/T12 contrast CT", ct, ct_lab, real_names)] + \
        [(title, v.image, v.labels.array, v.label_names) for title, v in shown]
    for r, (title, img, lab, nm) in enumerate(items):
        hu = img.array
        k = _axial_slice(lab, nm, "vertebrae_T12")
        j = _coronal_row(hu, lab, nm)
        ax = axes[r, 0]
        ax.imshow(_to_display(img, hu[k]), cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1],
                  aspect=img.spacing[1] / img.spacing[0])
        ax.set_title(f"{title}: axial (T12)", fontsize=9)
        ax.axis("off")
        cor = _to_display(img, hu[:, j, :][:, None, :])[:, 0, :]
        ax = axes[r, 1]
        ax.imshow(cor[::-1], cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=img.spacing[2] / img.spacing[0])
        ax.set_title(f"{title}: coronal", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
