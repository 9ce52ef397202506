"""Run ``mskseg bone`` (rules) on the real cases of ../shared/data and print the Dice figures.

* ircad-abdomen-ct17: all-bone Dice against the expert ``masks/bone.nii.gz`` (bone with marrow);
* ct-dicom-t12: ribs (left/right) and T11/T12 Dice against TotalSegmentator's model output;
* verse-crops: all-vertebra Dice and per-level Dice against the VerSe masks (VerSe numbering).

Usage: python scripts/evaluate_bone_real.py [--data ../shared/data] [--out DIR] (reports written into DIR).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from mskseg.bone.export import export_bone
from mskseg.bone.pipeline import run_bone
from mskseg.io import read_image


def _mask(path: Path, image) -> np.ndarray:
    """A label file resampled (nearest) onto ``image``'s grid, as an array (K, J, I)."""
    ref = image.to_sitk()
    lab = sitk.Resample(sitk.ReadImage(str(path)), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(lab)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _names(result, prefix: str) -> list[int]:
    return [v for v, n in result.labels.items() if n.startswith(prefix)]


def run_case(name: str, source: Path, out: Path | None):
    image = read_image(source)
    t0 = time.perf_counter()
    result = run_bone(image, device="cpu")
    seconds = time.perf_counter() - t0
    if out is not None:
        export_bone(out / name, image, result, overwrite=True)
    lab = np.asarray(result.labelmap.array)
    print(f"{name}: {image.array.shape} {tuple(round(s, 2) for s in image.spacing)} run {seconds:.1f} s, "
          f"levels {result.levels}, flag {result.summary['screening_flag']}, L1 {result.summary['L1_trabecular_HU']}"
          f" HU, phase {result.density['phase']['phase']} (aorta {result.density['phase']['aorta_hu']})")
    return image, result, lab


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    data, out = Path(args.data), (Path(args.out) if args.out else None)

    image, result, lab = run_case("ircad-abdomen-ct17", data / "ircad-abdomen-ct17" / "dicom", out)
    truth = _mask(data / "ircad-abdomen-ct17" / "masks" / "bone.nii.gz", image) > 0
    print(f"  all-bone Dice {dice(lab > 0, truth):.3f} (found {int((lab > 0).sum())} voxels, truth {int(truth.sum())})")

    image, result, lab = run_case("ct-dicom-t12", data / "ct-dicom-t12" / "dicom", out)
    ts = _mask(data / "ct-dicom-t12" / "totalseg_labels.nii.gz", image)
    ids = {}
    for line in (data / "ct-dicom-t12" / "labelmap_total_v2.tsv").read_text().splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].strip().isdigit():
            ids[parts[1].strip()] = int(parts[0])
    for side in ("left", "right"):
        t = np.isin(ts, [v for n, v in ids.items() if n.startswith(f"rib_{side}")])
        print(f"  ribs {side} Dice {dice(np.isin(lab, _names(result, f'ribs_{side}')), t):.3f}")
    t_bone = np.isin(ts, [v for n, v in ids.items() if n.startswith(("rib_", "vertebrae_", "sternum", "costal"))])
    print(f"  all bone (ribs, vertebrae, sternum) Dice {dice(lab > 0, t_bone):.3f}")
    for level in ("T11", "T12", "L1"):
        t = ts == ids.get(f"vertebrae_{level}", -1)
        if t.any():
            print(f"  {level} Dice {dice(np.isin(lab, _names(result, f'vertebrae_{level}')), t):.3f} "
                  f"(all column classes vs it: {dice(np.isin(lab, _names(result, 'vertebrae')) & t, t):.3f} covered)")

    from mskseg.anatomy import vertebra_from_verse

    for ct in sorted((data / "verse-crops").glob("*_ct.nii.gz")):
        name = ct.name.replace("_ct.nii.gz", "")
        image, result, lab = run_case(name, ct, out)
        truth = _mask(ct.parent / f"{name}_seg-vert_msk.nii.gz", image)
        column = np.isin(lab, _names(result, "vertebrae") + _names(result, "sacrum"))
        print(f"  all-vertebra Dice {dice(column, truth > 0):.3f}; all-bone vs vertebrae Dice {dice(lab > 0, truth > 0):.3f}")
        for value in sorted(set(np.unique(truth).tolist()) - {0}):
            level = vertebra_from_verse(int(value))
            if level:
                print(f"    {level}: Dice {dice(np.isin(lab, _names(result, f'vertebrae_{level}')), truth == value):.3f}")


if __name__ == "__main__":
    main()
