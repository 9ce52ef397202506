#!/usr/bin/env python
"""Measure the two body-composition tissue methods (network card and rules) on development data.

Three sets, each printed with per-class Dice (mean, min) for every method that can run:

1. held-out synthetic L3 phantoms: ``make_l3_batch(seed, n)`` with a seed the training never used (the
   shipped card was trained on l3-phantom seed 0: pool indices 0..599 and validation indices from 10**9);
   truth = the phantom's tissue labels. The phantom labels visceral fat with -190..-30 HU, so the windows
   used here are ``BodyCompSettings(vat_hu=VAT_HU_WIDE)`` (everything else the defaults).
2. L3 slices of ``synthesize_ct`` on the real anatomy of TotalSegmentator subject s0328 (truth:
   ``bodycomp_labels``), same windows.
3. the real series ct-dicom-t12 (T11/T12; no L3, the tissue logic still applies): the only muscle reference
   is TotalSegmentator's autochthon (paraspinal) output, so the paraspinal Dice is muscle within 10 mm of
   the autochthon masks vs those masks; and the share of liver / spleen / kidney / stomach pixels called
   muscle or fat (should be ~0).

PNGs of both methods (window -160..240 HU) are written to ``--png-dir``. The script ends with the method
that the held-out phantoms favour (higher mean of muscle, SAT, VAT Dice); ``DEFAULT_METHOD`` in
``mskseg.sarcopenia.tissue`` also weighs sets 2 and 3 (real anatomy) and says why it is what it is.

usage: python scripts/evaluate_tissue.py [--n 20] [--seed 20260] [--png-dir /tmp/tissue] [--shared ../shared]
                                        [--model CARD]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = {1: "muscle", 2: "SAT", 3: "VAT", 4: "IMAT"}


def _dice_rows(pred: np.ndarray, ref: np.ndarray) -> list[float]:
    from mskseg.train.evaluate import dice

    return [dice(pred, ref, c) for c in CLASSES]


def _summary(name: str, rows: list[list[float]]) -> str:
    arr = np.asarray(rows, float)
    mean, low = np.nanmean(arr, 0), np.nanmin(arr, 0)
    cells = "  ".join(f"{CLASSES[c]} {m:.3f} (min {lo:.3f})" for c, m, lo in zip(CLASSES, mean, low))
    return f"  {name:8s} n={len(rows):3d}  {cells}"


def _overlay(ax, hu, lab, title):
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap([(0, 0, 0, 0), (0.85, 0.2, 0.15, 0.55), (0.95, 0.85, 0.2, 0.45), (1.0, 0.5, 0.1, 0.5),
                           (0.2, 0.9, 0.6, 0.8)])
    ax.imshow(hu, cmap="gray", vmin=-160, vmax=240)
    ax.imshow(lab, cmap=cmap, vmin=0, vmax=4, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _save_grid(path: Path, rows: list[tuple[np.ndarray, list[tuple[np.ndarray, str]]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(5 * cols, 5 * len(rows)), squeeze=False)
    for r, (hu, panels) in enumerate(rows):
        for c in range(cols):
            if c < len(panels):
                _overlay(axes[r, c], hu, panels[c][0], panels[c][1])
            else:
                axes[r, c].axis("off")
    fig.suptitle("red muscle, yellow SAT, orange VAT, green IMAT (window -160..240 HU)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="held-out phantom slices (default 20)")
    parser.add_argument("--seed", type=int, default=20260, help="phantom seed, not 0 (training) (default 20260)")
    parser.add_argument("--png-dir", type=Path, default=Path("/tmp/tissue"))
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", help="tissue model card file or name (default: the installed card)")
    args = parser.parse_args(argv)
    if args.seed == 0:
        parser.error("seed 0 is the training seed of the shipped card; choose another")

    from mskseg.image import Image
    from mskseg.sarcopenia.settings import VAT_HU_WIDE, BodyCompSettings
    from mskseg.sarcopenia.tissue import DEFAULT_METHOD, find_tissue_card, segment_tissues
    from mskseg.synth.phantom import make_l3_batch

    args.png_dir.mkdir(parents=True, exist_ok=True)
    settings = BodyCompSettings(vat_hu=VAT_HU_WIDE)
    card = find_tissue_card(args.model)
    methods = ["rules"] + (["network"] if card is not None else [])
    print(f"tissue card: {card.name + ' ' + card.version + ' (' + str(card.path) + ')' if card else 'none installed'}")
    print(f"windows: {settings.as_dict()}")
    scores: dict[str, dict[str, list[list[float]]]] = {m: {} for m in methods}

    def run(image: Image, slices, method: str):
        return segment_tissues(image, slices, method=method, settings=settings, device=args.device,
                               cross_check=False, model=card).labelmap.array

    # 1. held-out phantoms
    t0 = time.perf_counter()
    seconds = {m: 0.0 for m in methods}
    png_rows = []
    for idx in range(args.n):
        sample = make_l3_batch(args.seed, 1, start=idx)[0]
        panels = [(sample.tissue, f"phantom {args.seed}/{idx} truth")]
        for m in methods:
            t = time.perf_counter()
            pred = run(sample.image, None, m)
            seconds[m] += time.perf_counter() - t
            scores[m].setdefault("phantom", []).append(_dice_rows(pred, sample.tissue))
            panels.append((pred, m))
        if idx < 4:
            png_rows.append((sample.image.array, panels))
    _save_grid(args.png_dir / "tissue_phantoms.png", png_rows)
    print(f"\n1. held-out phantoms make_l3_batch(seed={args.seed}, n={args.n}) "
          f"({time.perf_counter() - t0:.0f} s; per slice: "
          + ", ".join(f"{m} {seconds[m] / max(args.n, 1):.2f} s" for m in methods) + ")")
    for m in methods:
        print(_summary(m, scores[m]["phantom"]))

    # 2. synthesize_ct on s0328 at L3
    lab_path = args.shared / "data" / "totalseg-labelmaps" / "s0328" / "s0328_combined_total_v2.nii.gz"
    tsv = args.shared / "data" / "ct-dicom-t12" / "labelmap_total_v2.tsv"
    if lab_path.exists() and tsv.exists():
        import SimpleITK as sitk

        from mskseg.synth.labelmap_ct import bodycomp_labels, slab_around, synthesize_ct

        names = {}
        for line in tsv.read_text().splitlines()[1:]:
            v, n = line.split("\t")[:2]
            names[int(v)] = n
        labelmap = Image.from_sitk(sitk.ReadImage(str(lab_path)))
        crop = slab_around(labelmap, names, "vertebrae_L3", margin_mm=0.0)
        png_rows = []
        for rep in range(2):
            vol = synthesize_ct(labelmap, names, np.random.default_rng([args.seed, 328, rep]), crop=crop,
                                spacing_mm=(0.8, 0.8, 3.0))
            truth, _ = bodycomp_labels(vol)
            l3 = [v for v, n in vol.label_names.items() if n == "vertebrae_L3"]
            ks = np.flatnonzero(np.isin(vol.labels.array, l3).any(axis=(1, 2)))
            ks = [int(k) for k in ks[len(ks) // 2 - 1: len(ks) // 2 + 2]]
            panels_by_k = {k: [(truth.array[k], f"s0328 synth {rep} k={k} truth")] for k in ks}
            for m in methods:
                pred = run(vol.image, ks, m)
                for k in ks:
                    scores[m].setdefault("s0328", []).append(_dice_rows(pred[k], truth.array[k]))
                    panels_by_k[k].append((pred[k], m))
            png_rows.append((vol.image.array[ks[1]], panels_by_k[ks[1]]))
        _save_grid(args.png_dir / "tissue_s0328.png", png_rows)
        print("\n2. synthesize_ct(s0328) L3 slices (2 draws x 3 slices)")
        for m in methods:
            print(_summary(m, scores[m]["s0328"]))
    else:
        print(f"\n2. skipped: {lab_path} not found")

    # 3. the real series
    dicom = args.shared / "data" / "ct-dicom-t12" / "dicom"
    seg = args.shared / "data" / "ct-dicom-t12" / "totalseg_labels.nii.gz"
    if dicom.exists() and seg.exists():
        from scipy import ndimage

        from mskseg.image import labels_on_grid
        from mskseg.io import read_image

        image = read_image(str(dicom))
        ts = labels_on_grid(read_image(str(seg)), image)
        ks = list(range(image.array.shape[0]))
        auto = np.isin(ts, [86, 87])
        organs = np.isin(ts, [1, 2, 3, 5, 6])  # spleen, kidneys, liver, stomach
        print("\n3. real ct-dicom-t12 (20 slices, T11/T12): paraspinal muscle vs TotalSegmentator autochthon; "
              "organ pixels labelled as a tissue")
        png_rows = []
        preds = {}
        for m in methods:
            pred = run(image, ks, m)
            preds[m] = pred
            near = np.stack([ndimage.distance_transform_edt(~a, sampling=image.spacing[1::-1]) <= 10.0
                             for a in auto])
            mus = (pred == 1) & near
            d = 2 * (mus & auto).sum() / max(mus.sum() + auto.sum(), 1)
            organ_tissue = (pred[organs] > 0).mean()
            organ_muscle = (pred[organs] == 1).mean()
            print(f"  {m:8s} paraspinal Dice {d:.3f}  organ pixels called muscle {organ_muscle:.3%}, any tissue "
                  f"{organ_tissue:.3%}")
        for k in (0, 10, 19):
            png_rows.append((image.array[k], [(preds[m][k], f"real t12 k={k} {m}") for m in methods]))
        _save_grid(args.png_dir / "tissue_real_t12.png", png_rows)
    else:
        print(f"\n3. skipped: {dicom} not found")

    print(f"\nPNGs: {args.png_dir}/tissue_phantoms.png, tissue_s0328.png, tissue_real_t12.png")
    if "network" in scores and scores["network"].get("phantom"):
        mean = {m: float(np.nanmean(np.asarray(scores[m]["phantom"], float)[:, :3])) for m in methods}
        best = max(mean, key=mean.get)
        print(f"held-out phantoms favour {best!r} (mean muscle/SAT/VAT Dice: "
              + ", ".join(f"{m} {v:.3f}" for m, v in mean.items()) + "); weigh this against sets 2 and 3 (real "
              f"anatomy) before changing DEFAULT_METHOD, currently {DEFAULT_METHOD!r}")
    else:
        print(f"decision: only the rules could run (no tissue card installed): DEFAULT_METHOD stays {DEFAULT_METHOD!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
