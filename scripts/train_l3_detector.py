"""Train the L3 detector (``sarcopenia-l3-detector``) on synthetic CT volumes, on the CPU.

Four sub-commands:

``generate``  synthetic CT volumes -> their bone projections and the true level centres, one ``.npz`` per volume:
              procedural torso phantoms (:mod:`mskseg.synth.torso`, every anatomical variant) and CTs synthesised
              from the real TotalSegmentator label maps in ``../shared/data/totalseg-labelmaps`` (s0327 neck to
              legs, s0328 abdomen-pelvis; with 11-rib variants made by removing the 12th rib pair), with spacing
              0.8-2 mm in-plane and 1-5 mm between slices, noise, contrast phases, osteoporosis and metal as the
              generators draw them.
``train``     the projection network on random 2 mm-row crops of those projections (fields of view from chest-
              abdomen-pelvis to a tight abdomen), with intensity, noise, z-scaling and truncation augmentation;
              writes the weights and a model card whose validation figures are measured on held-out volumes.
``card``      the model card: validation measured on the held-out projections (files named ``heldout_*``).
``evaluate``  the full detector (:func:`mskseg.sarcopenia.l3.detect_l3`, network + rules) on freshly generated
              held-out torso volumes across spacings, fields of view and variants; prints the accuracy table.

How the shipped detector was made (about 30 minutes on 2 busy CPU cores; generation runs beside training, which
takes in new volumes every 100 steps)::

    python scripts/train_l3_detector.py generate --out /tmp/l3/data --labelmap 8 --seed 1
    python scripts/train_l3_detector.py generate --out /tmp/l3/data --torso 60 --seed 11   # and --seed 12;
    #   both stopped when training had taken in 77 torso volumes
    python scripts/train_l3_detector.py generate --out /tmp/l3/data --torso 16 --seed 50 --prefix heldout
    python scripts/train_l3_detector.py train --data /tmp/l3/data --out /tmp/l3/model --steps 1100 \
        --batch-size 16 --threads 1 --max-minutes 24
    python scripts/train_l3_detector.py card --data /tmp/l3/data --out /tmp/l3/model
    cp /tmp/l3/model/sarcopenia-l3-detector.* Resources/Models/sarcopenia-l3-detector/
    python scripts/train_l3_detector.py evaluate --n 36      # the accuracy table of the full detector
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mskseg.anatomy import totalseg_name  # noqa: E402
from mskseg.image import Image  # noqa: E402
from mskseg.spine import geometry, levelnet  # noqa: E402

LABELMAPS = REPO.parent / "shared" / "data" / "totalseg-labelmaps"
GENERATOR_VERSION = "l3-projections-1"


# ---------------------------------------------------------------------------------------------- truth
def _vertebra_centres_from_labels(labels: Image, names: dict[int, str]) -> dict[str, float]:
    """Vertebra name (T1..L5, S1, L6) -> LPS z (mm) of its body centre, from a label map on an LPS-aligned grid.

    The body is the anterior half of the vertebra label (posterior elements slope caudally and would pull
    the centroid down).
    """
    arr = labels.array
    centres: dict[str, float] = {}
    zs = labels.origin[2] + labels.direction[2, 2] * labels.spacing[2] * np.arange(arr.shape[0])
    ysign = np.sign(labels.direction[1, 1])
    for value, name in names.items():
        if not name.startswith("vertebrae_"):
            continue
        level = name.split("_", 1)[1]
        mask = arr == value
        if mask.sum() < 20:
            continue
        kk, jj, _ = np.nonzero(mask)
        y = jj * ysign
        body = y <= np.median(y)  # anterior half (LPS y grows posterior)
        k_mean = float(kk[body].mean())
        # a vertebra cut by the field of view has a biased centre: keep only complete ones
        if kk.min() == 0 or kk.max() == arr.shape[0] - 1 or (kk.max() - kk.min() + 1) * labels.spacing[2] < 15.0:
            continue
        centres[level] = float(np.interp(k_mean, np.arange(len(zs)), zs))
    return centres


def _names_table() -> dict[int, str]:
    names: dict[int, str] = {}
    for line in (LABELMAPS / "labelmap_total_v2.tsv").read_text().splitlines()[1:]:
        value, name = line.split("\t")[:2]
        names[int(value)] = name
    return names


def _save_sample(path: Path, proj: geometry.BoneProjections, centres: dict[str, float], variant: str,
                 top_shift: int, bottom_shift: int, meta: dict[str, Any]) -> None:
    np.savez_compressed(
        path, frontal=proj.frontal.astype(np.float16), sagittal=proj.sagittal.astype(np.float16),
        z_mm=proj.z_mm, centres=json.dumps(centres), variant=variant, top_shift=top_shift,
        bottom_shift=bottom_shift, meta=json.dumps(meta))


def generate_labelmap_samples(out: Path, n: int, seed: int) -> None:
    """Synthesise ``n`` CTs from the real label maps and save their projections and level centres."""
    import SimpleITK as sitk

    from mskseg.synth.labelmap_ct import synthesize_ct

    names = _names_table()
    maps = {s: Image.from_sitk(sitk.ReadImage(str(LABELMAPS / s / f"{s}_combined_total_v2.nii.gz")))
            for s in ("s0327", "s0328")}
    rib12 = [v for v, nm in names.items() if nm in ("rib_left_12", "rib_right_12")]
    rng = np.random.default_rng(seed)
    for i in range(n):
        t0 = time.time()
        subject = ("s0327", "s0328")[i % 2]
        variant = "ribs_11" if rng.random() < 0.3 else "normal"
        lab = maps[subject]
        if variant == "ribs_11":
            arr = lab.array.copy()
            arr[np.isin(arr, rib12)] = 0
            lab = lab.with_array(arr)
        in_plane = float(rng.uniform(0.8, 2.0))
        dz = float(rng.choice([1.0, 1.25, 2.0, 2.5, 3.0, 5.0]))
        vol = synthesize_ct(lab, names, rng, spacing_mm=(in_plane, in_plane, dz), bone_texture=False)
        proj = geometry.bone_projections(vol.image)
        centres = _vertebra_centres_from_labels(vol.labels, vol.label_names)
        # 11 rib pairs: counted from the last rib, every vertebra is one level lower (T11 looks like T12)
        top_shift = 1 if variant == "ribs_11" else 0
        _save_sample(out / f"lm_{seed}_{i:04d}.npz", proj, centres, variant, top_shift, 0,
                     {"source": subject, "spacing": list(vol.image.spacing), "seconds": time.time() - t0})
        print(f"labelmap {i + 1}/{n} {subject} {variant} spacing {vol.image.spacing} "
              f"{time.time() - t0:.1f} s", flush=True)


def generate_torso_samples(out: Path, n: int, seed: int, prefix: str = "torso") -> None:
    """Generate ``n`` torso phantoms (all variants) and save their projections and level centres."""
    from mskseg.synth import torso

    rng = np.random.default_rng(seed)
    for i in range(n):
        t0 = time.time()
        for _ in range(5):
            try:
                sample = torso.make_torso(rng, **_torso_draw(rng))
                break
            except ValueError as exc:  # a random field of view outside the torso
                print(f"  redraw: {exc}", flush=True)
        proj = geometry.bone_projections(sample.image)
        centres, top_shift, bottom_shift = torso_truth(sample)
        _save_sample(out / f"{prefix}_{seed}_{i:04d}.npz", proj, centres, str(sample.variant), top_shift,
                     bottom_shift, {"source": "torso", "spacing": list(sample.image.spacing),
                                    "seconds": time.time() - t0})
        print(f"torso {i + 1}/{n} {sample.variant} spacing {sample.image.spacing} {time.time() - t0:.1f} s",
              flush=True)


def _torso_draw(rng: np.random.Generator) -> dict[str, Any]:
    """Keyword arguments of :func:`mskseg.synth.torso.make_torso` for one training volume.

    Transitional anatomy is over-represented (half the volumes), fields of view are presets or random ranges
    around L3, slices 1-5 mm, 256 x 256 pixels of 1.2-2 mm (the projections are 3 mm wide anyway).
    """
    from mskseg.synth import torso

    variants = list(torso.VARIANTS)
    p = np.array([0.5 if v == "normal" else 0.5 / (len(variants) - 1) for v in variants])
    if rng.random() < 0.5:
        z_range: Any = str(rng.choice(list(torso.FOV_PRESETS)))
    else:
        z_range = (float(rng.uniform(-330.0, -50.0)), float(rng.uniform(50.0, 420.0)))
    in_plane = float(rng.uniform(0.6, 1.0)) * 2.0
    return {"z_range": z_range, "variant": str(rng.choice(variants, p=p / p.sum())), "size": 256,
            "spacing_mm": (in_plane, in_plane, float(rng.choice([1.0, 1.25, 2.0, 2.5, 3.0, 5.0])))}


#: Shift of the level counted from the last rib / from the sacrum relative to the true level (see torso.py).
VARIANT_SHIFTS: dict[str, tuple[int, int]] = {"normal": (0, 0), "six_lumbar": (0, -1), "sacralised_L5": (0, 1),
                                              "ribs_11": (1, 0), "ribs_13": (-1, 0)}


def torso_truth(sample: Any) -> tuple[dict[str, float], int, int]:
    """Level centres (true numbering, z mm) of a torso sample and its (from-ribs, from-sacrum) shifts."""
    centres = {name: float(z) for name, z in sample.level_centres.items()
               if name in levelnet.LEVEL_INDEX or name == "L6"}
    top, bottom = VARIANT_SHIFTS[str(sample.variant)]
    return centres, top, bottom


def level_coordinates(centres: dict[str, float], variant: str) -> dict[str, float]:
    """Vertebra name -> true level coordinate (T1 = 1 ... L5 = 17, L6 = 18, S1 = last lumbar + 1)."""
    coords = {name: float(levelnet.LEVEL_INDEX[name]) for name in centres if name in levelnet.LEVEL_INDEX}
    if "L6" in centres:
        coords["L6"] = 18.0
        if "S1" in coords:
            coords["S1"] = 19.0
    return coords


# ---------------------------------------------------------------------------------------------- training
TRAIN_ROWS = 256  # 512 mm of 2 mm rows per training crop


@dataclass
class Projected:
    """One generated volume: its projections (native rows) and truth."""

    name: str
    frontal: np.ndarray
    sagittal: np.ndarray
    z_mm: np.ndarray
    centres: dict[str, float]
    variant: str
    top_shift: int
    bottom_shift: int


def load_samples(folder: Path) -> list[Projected]:
    """Every ``.npz`` written by ``generate`` in ``folder``, sorted by name."""
    out = []
    for path in sorted(folder.glob("*.npz")):
        d = np.load(path)
        centres = {k: float(v) for k, v in json.loads(str(d["centres"])).items()
                   if k in levelnet.LEVEL_INDEX or k == "L6"}
        if len(centres) < 3:
            continue
        out.append(Projected(path.stem, d["frontal"].astype(np.float32), d["sagittal"].astype(np.float32),
                             d["z_mm"].astype(float), centres, str(d["variant"]), int(d["top_shift"]),
                             int(d["bottom_shift"])))
    return out


def level_targets(centres: dict[str, float], coords: dict[str, float], z: np.ndarray, shift: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Level coordinate at row positions ``z`` (mm) from the centres, and where it is known (bool mask).

    Linear between centres, extrapolated by up to 0.7 vertebra beyond the first and last known centre.
    """
    items = sorted(((centres[n], coords[n] + shift) for n in centres if n in coords), key=lambda t: t[0])
    zc = np.array([t[0] for t in items])
    lv = np.array([t[1] for t in items], float)
    t = np.interp(z, zc, lv)
    lo_slope = (lv[1] - lv[0]) / (zc[1] - zc[0])
    hi_slope = (lv[-1] - lv[-2]) / (zc[-1] - zc[-2])
    t = np.where(z < zc[0], lv[0] + (z - zc[0]) * lo_slope, t)
    t = np.where(z > zc[-1], lv[-1] + (z - zc[-1]) * hi_slope, t)
    known = (t <= lv[0] + 0.7) & (t >= lv[-1] - 0.7)
    return t.astype(np.float32), known


def make_crop(sample: Projected, rng: np.random.Generator, augment: bool = True
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One training example: network input (4, TRAIN_ROWS, W), targets (4, TRAIN_ROWS), loss masks (4, TRAIN_ROWS).

    Field of view: 140-700 mm long (tight abdomen to chest-abdomen-pelvis), holding L3 in nine of ten crops;
    physical z scaling 0.9-1.1 (short and tall patients); intensity gain, noise, left-right mirror, lateral
    truncation of the frontal view and small errors of the spine's position.
    """
    z = sample.z_mm
    centres = dict(sample.centres)
    scale = float(rng.uniform(0.9, 1.1)) if augment else 1.0
    zc0 = centres.get("L3", float(np.mean(list(centres.values()))))
    z = zc0 + (z - zc0) * scale
    centres = {k: zc0 + (v - zc0) * scale for k, v in centres.items()}
    length = float(rng.uniform(140.0, 700.0)) if augment else 500.0
    length = min(length, z[-1] - z[0], (TRAIN_ROWS - 4) * geometry.ROW_MM)
    if augment and rng.random() < 0.9 and "L3" in centres:
        lo = max(z[0], centres["L3"] - length + 15.0)
        hi = min(z[-1] - length, centres["L3"] - 15.0)
        start = float(rng.uniform(lo, hi)) if hi > lo else float(rng.uniform(z[0], max(z[0], z[-1] - length)))
    else:
        start = float(rng.uniform(z[0], max(z[0], z[-1] - length)))
    keep = (z >= start) & (z <= start + length)
    proj = geometry.BoneProjections(sample.frontal[:, keep], sample.sagittal[:, keep], z[keep],
                                    np.arange(keep.sum()), 0.0, 0.0)
    rows = int(length // geometry.ROW_MM)
    x_fov, z_fov = levelnet.network_input(proj, start_mm=float(z[keep][0]) + float(rng.uniform(0, geometry.ROW_MM)),
                                          rows=rows)
    offset = int(rng.integers(0, TRAIN_ROWS - rows + 1)) if augment else 0
    x = np.zeros((4, TRAIN_ROWS, x_fov.shape[2]), np.float32)
    x[:, offset: offset + rows] = x_fov
    zr = z_fov[0] + (np.arange(TRAIN_ROWS) - offset) * geometry.ROW_MM
    in_fov = np.zeros(TRAIN_ROWS, bool)
    in_fov[offset: offset + rows] = True
    if augment:
        x *= rng.uniform(0.8, 1.25, size=(4, 1, 1)).astype(np.float32)
        x += rng.normal(0.0, rng.uniform(0.0, 0.04), size=x.shape).astype(np.float32) * (x != 0)
        if rng.random() < 0.5:  # mirror left-right
            columns = geometry.FRONTAL_COLUMNS
            x[0:2, :, :columns] = x[0:2, :, columns - 1:: -1][:, :, :columns]
        shift = int(rng.integers(-3, 4))
        if shift:
            x[0:2, :, : geometry.FRONTAL_COLUMNS] = np.roll(x[0:2, :, : geometry.FRONTAL_COLUMNS], shift, axis=2)
        if rng.random() < 0.3:  # truncated field of view in-plane
            half = int(rng.integers(35, 60))
            c = geometry.FRONTAL_COLUMNS // 2
            x[0:2, :, : max(0, c - half)] = 0
            x[0:2, :, c + half: geometry.FRONTAL_COLUMNS] = 0
    coords = level_coordinates(centres, sample.variant)
    primary, known = level_targets(centres, coords, zr)
    rib_name = {1: "T11", -1: "L1"}.get(sample.top_shift, "T12")
    rib_seen = rib_name in centres and zr[offset] < centres[rib_name] < zr[offset + rows - 1]
    sacrum_seen = "S1" in centres and zr[offset] < centres["S1"] < zr[offset + rows - 1]
    # a count that cannot be made in this field of view is taught as "same as the true level"
    top, known_top = level_targets(centres, coords, zr, sample.top_shift if rib_seen else 0)
    bottom, known_bottom = level_targets(centres, coords, zr, sample.bottom_shift if sacrum_seen else 0)
    heat = np.zeros(TRAIN_ROWS, np.float32)
    for zc in centres.values():
        heat = np.maximum(heat, np.exp(-0.5 * ((zr - zc) / 3.0) ** 2))
    targets = np.stack([primary, top, bottom, heat])
    masks = np.stack([known & in_fov, known_top & in_fov, known_bottom & in_fov,
                      in_fov & (known | (heat > 0.05))]).astype(np.float32)
    return x, targets.astype(np.float32), masks, zr


def train(args: argparse.Namespace) -> int:
    """Train the projection network and write weights + model card to ``args.out``."""
    import torch
    import torch.nn.functional as F

    from mskseg.models import build_network_from_architecture

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    samples = load_samples(args.data)
    held_out = [s for s in samples if s.name.startswith("heldout")]
    train_set = [s for s in samples if not s.name.startswith("heldout")]
    print(f"{len(train_set)} training volumes, {len(held_out)} held-out", flush=True)
    model = build_network_from_architecture(levelnet.NETWORK_NAME, {})
    if args.init is not None:  # continue from earlier weights (a second, annealing stage)
        from mskseg.models import read_state_dict

        model.load_state_dict(read_state_dict(args.init, "safetensors"))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps,
                                                pct_start=max(args.warmup, 0.01))
    weights = torch.tensor([1.0, 0.5, 0.5])
    t0 = time.time()
    model.train()
    for step in range(args.steps):
        if step and step % 100 == 0:  # volumes still being generated join the pool
            fresh = [s for s in load_samples(args.data) if not s.name.startswith("heldout")]
            if len(fresh) > len(train_set):
                print(f"  {len(fresh)} training volumes", flush=True)
                train_set = fresh
        batch = [make_crop(train_set[int(rng.integers(len(train_set)))], rng) for _ in range(args.batch_size)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]))
        y = torch.from_numpy(np.stack([b[1] for b in batch]))
        m = torch.from_numpy(np.stack([b[2] for b in batch]))
        out = model(x)
        reg = F.smooth_l1_loss(out[:, :3], y[:, :3], reduction="none", beta=0.2)
        reg = ((reg * m[:, :3]).sum(dim=(0, 2)) / m[:, :3].sum(dim=(0, 2)).clamp_min(1.0) * weights).sum()
        heat = F.binary_cross_entropy_with_logits(out[:, 3], y[:, 3], reduction="none")
        heat = (heat * m[:, 3]).sum() / m[:, 3].sum().clamp_min(1.0)
        loss = reg + 4.0 * heat
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.4f} (levels {reg.item():.4f}, centres {heat.item():.4f}) "
                  f"{time.time() - t0:.0f} s", flush=True)
        if time.time() - t0 > args.max_minutes * 60:
            print(f"stopping at step {step}: time limit", flush=True)
            break
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    from mskseg.models import save_model_card, save_weights

    weights_path = args.out / f"{levelnet.DETECTOR_CARD_NAME}.safetensors"
    sha = save_weights(model.state_dict(), weights_path, overwrite=True)
    previous = {}
    if args.init is not None and (args.init.parent / "training.json").exists():
        previous = json.loads((args.init.parent / "training.json").read_text())
    (args.out / "training.json").write_text(json.dumps({
        "steps": step + 1 + int(previous.get("steps", 0)),
        "stages": [previous, {"steps": step + 1, "lr": args.lr}] if previous else [{"steps": step + 1, "lr": args.lr}],
        "batch_size": args.batch_size, "seconds": round(time.time() - t0, 1),
        "train_volumes": len(train_set), "sources": sorted({s.name.split("_")[0] for s in train_set}),
        "variants": sorted({s.variant for s in train_set}), "seed": args.seed, "sha256": sha}, indent=1))
    print(f"wrote {weights_path} ({sha})", flush=True)
    validation = evaluate_projections(model, held_out) if held_out else []
    card = make_card(sha, step + 1, len(train_set), sorted({s.variant for s in train_set}), validation, args.seed)
    save_model_card(card, args.out / f"{levelnet.DETECTOR_CARD_NAME}.card.json", overwrite=True)
    print(json.dumps(validation, indent=1), flush=True)
    return 0


def evaluate_projections(model: Any, samples: list[Projected]) -> list[dict[str, Any]]:
    """L3 error (mm) of the network alone on held-out projections (whole field of view, no augmentation)."""
    import torch

    errors = []
    for sample in samples:
        if "L3" not in sample.centres:
            continue
        proj = geometry.BoneProjections(sample.frontal, sample.sagittal, sample.z_mm, np.arange(len(sample.z_mm)), 0, 0)
        if not sample.z_mm[0] < sample.centres["L3"] < sample.z_mm[-1]:
            continue
        x, z_rows = levelnet.network_input(proj)
        with torch.inference_mode():
            out = model(torch.from_numpy(x[None])).numpy()[0]
        found = levelnet.decode_levels(out, z_rows).levels_mm
        err = abs(found["L3"] - sample.centres["L3"]) if "L3" in found else float("inf")
        errors.append(err)
    if not errors:
        return []
    e = np.array(errors)
    n = len(e)
    dataset = f"{n} held-out synthetic torso CTs (all fields of view, spacings 1-5 mm, all variants)"
    note = "network alone on the whole volume; L3 centre z error"
    finite = e[np.isfinite(e)]
    return [
        {"dataset": dataset, "kind": "synthetic-held-out", "metric": "l3_median_abs_error_mm",
         "value": round(float(np.median(e)), 2), "n": n, "note": note},
        {"dataset": dataset, "kind": "synthetic-held-out", "metric": "l3_within_3mm_fraction",
         "value": round(float(np.mean(e <= 3.0)), 3), "n": n, "note": note},
        {"dataset": dataset, "kind": "synthetic-held-out", "metric": "l3_within_10mm_fraction",
         "value": round(float(np.mean(e <= 10.0)), 3), "n": n, "note": note},
        {"dataset": dataset, "kind": "synthetic-held-out", "metric": "l3_max_abs_error_mm",
         "value": round(float(finite.max()) if finite.size else -1.0, 2), "n": n,
         "note": note + ("" if finite.size == n else f"; {n - finite.size} volumes without an L3 found")},
    ]


def describe_training_data(samples: list[Projected]) -> str:
    """The training volumes in words: how many of each source and which variants."""
    torso_set = [s for s in samples if s.name.startswith("torso")]
    labelmap_set = [s for s in samples if s.name.startswith("lm")]
    parts = []
    if torso_set:
        counts = {v: sum(s.variant == v for s in torso_set) for v in sorted({s.variant for s in torso_set})}
        parts.append(f"{len(torso_set)} procedural torso phantoms (mskseg.synth.torso; variants "
                     + ", ".join(f"{k} {n}" for k, n in counts.items()) + ")")
    if labelmap_set:
        counts = {v: sum(s.variant == v for s in labelmap_set) for v in sorted({s.variant for s in labelmap_set})}
        parts.append(f"{len(labelmap_set)} CTs synthesised from the TotalSegmentator label maps s0327 and s0328 "
                     "(Wasserthal et al., zenodo 10.5281/zenodo.10047292, CC BY 4.0; mskseg.synth.labelmap_ct; "
                     + ", ".join(f"{k} {n}" for k, n in counts.items()) + ")")
    return " and ".join(parts)


def make_card(sha: str, steps: int, n_train: int, variants: list[str], validation: list[dict[str, Any]],
              seed: int, data_text: str = "") -> dict[str, Any]:
    """The detector's model card (schema-valid; validation only as measured)."""
    return {
        "schema_version": "1.0",
        "name": levelnet.DETECTOR_CARD_NAME,
        "title": "L3 vertebral level detector (CT bone projections)",
        "task": "sarcopenia",
        "version": "1.0.0",
        "description": (
            "Finds the vertebral levels T1..L5 (and the L3 slice) of a CT from frontal and sagittal bone "
            "projections (mskseg.spine.geometry.bone_projections: 2 mm rows along z, 3 mm columns). Outputs per "
            "2 mm row: level coordinate (T1 = 1 ... L3 = 15 ... L5 = 17), the same counted from the last rib and "
            "from the sacrum (their difference flags transitional anatomy), and the logit of a vertebral-body "
            "centre. The classes below name the level coordinate's integer values. Trained on synthetic CTs only; "
            "always cross-checked with the rule-based count of mskseg.spine.rules."),
        "licence": "Apache-2.0",
        "modality": "CT",
        "dimensions": "2d",
        "input": {"spacing_mm": [geometry.COLUMN_MM, geometry.ROW_MM], "normalisation": "none", "channels": 4},
        "classes": [{"label": levelnet.LEVEL_INDEX[n], "name": totalseg_name(n)} for n in levelnet.LEVELS],
        "architecture": {"name": levelnet.NETWORK_NAME, "args": {}},
        "weights": {"file": f"{levelnet.DETECTOR_CARD_NAME}.safetensors", "sha256": sha, "format": "safetensors"},
        "training": {
            "data": (f"{n_train} synthetic CT volumes: {data_text or ', '.join(variants)}; random fields of view "
                     "140-700 mm, z scaling 0.9-1.1, intensity and noise augmentation, lateral truncation"),
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "epochs": 1,
            "steps": steps,
            "date": time.strftime("%Y-%m-%d"),
        },
        "validation": validation,
        "references": [
            "Derstine et al. 2018, Sci Rep 8:11369 (fall-back levels L2, L4, L5, L1, T12, T11, T10)",
            "Kanavati et al. 2020, Sci Rep 10:12813 (L3 slice detection from CT)",
        ],
    }


def write_card(args: argparse.Namespace) -> int:
    """Measure the trained weights in ``args.out`` on the held-out projections and write the model card."""
    import torch

    from mskseg.models import build_network_from_architecture, read_state_dict, save_model_card, sha256_file

    torch.set_num_threads(args.threads)
    weights_path = args.out / f"{levelnet.DETECTOR_CARD_NAME}.safetensors"
    model = build_network_from_architecture(levelnet.NETWORK_NAME, {})
    model.load_state_dict(read_state_dict(weights_path, "safetensors"))
    model.eval()
    samples = load_samples(args.data)
    held_out = [s for s in samples if s.name.startswith("heldout")]
    train_set = [s for s in samples if not s.name.startswith("heldout")]
    info = json.loads((args.out / "training.json").read_text()) if (args.out / "training.json").exists() else {}
    validation = evaluate_projections(model, held_out)
    card = make_card(sha256_file(weights_path), int(info.get("steps", 0)), len(train_set),
                     sorted({s.variant for s in train_set}), validation, int(info.get("seed", 0)),
                     describe_training_data(train_set))
    save_model_card(card, args.out / f"{levelnet.DETECTOR_CARD_NAME}.card.json", overwrite=True)
    print(json.dumps(validation, indent=1))
    return 0


EVAL_GRID = [  # (field of view, slice spacing mm, variant)
    ("chest_abdomen_pelvis", 5.0, "normal"), ("abdomen", 2.5, "normal"), ("abdomen", 1.0, "normal"),
    ("tight_abdomen", 2.5, "normal"), ("abdomen_pelvis", 5.0, "normal"), ("tight_abdomen", 1.0, "normal"),
    ("abdomen", 5.0, "normal"), ("abdomen_pelvis", 2.5, "normal"),
    ("abdomen", 2.5, "six_lumbar"), ("abdomen_pelvis", 2.5, "sacralised_L5"), ("abdomen", 2.5, "ribs_11"),
    ("chest_abdomen_pelvis", 2.5, "ribs_13"),
]


def evaluate(args: argparse.Namespace) -> int:
    """The full detector (network + rules) on fresh held-out torso volumes; prints the accuracy table."""
    import torch

    from mskseg.models import load_model_card
    from mskseg.sarcopenia.l3 import L3NotFoundError, detect_l3
    from mskseg.synth import torso

    torch.set_num_threads(args.threads)
    card = load_model_card(args.card) if args.card else None
    rows = []
    for i in range(args.n):
        fov, dz, variant = EVAL_GRID[i % len(EVAL_GRID)]
        if args.variants == "transitional" and variant == "normal":
            continue  # the same volumes (seed + i) as the full run, the transitional ones only
        rng = np.random.default_rng(args.seed + i)
        sample = torso.make_torso(rng, z_range=fov, variant=variant, size=args.size,
                                  spacing_mm=(1.5 * 256 / args.size, 1.5 * 256 / args.size, dz))
        t0 = time.perf_counter()
        try:
            result = detect_l3(sample.image, device="cpu", card=card)
            err_mm = abs(result.index - sample.l3_index) * dz
            flagged = any("transitional" in w for w in result.warnings)
            warned = bool(result.warnings) or result.confidence < 0.5
            rules_mm = result.cross_check.get("difference_mm")
            confidence = result.confidence
            findings = list((result.cross_check.get("transitional") or {}).get("findings") or [])
            # levels named more than 10 mm from their true body centre (in the numbering from the top)
            wrong = sorted(n for n, k in result.levels.items() if n in sample.level_slices
                           and abs(k - sample.level_slices[n]) * dz > 10.0)
        except L3NotFoundError as exc:
            err_mm, flagged, warned, rules_mm, confidence = float("inf"), False, True, None, 0.0
            findings, wrong = [], []
            print("  not found:", exc.message)
        rows.append({"fov": fov, "dz": dz, "variant": variant, "err_mm": err_mm, "flagged": flagged,
                     "warned": warned, "confidence": confidence, "rules_minus_net_mm": rules_mm,
                     "findings": findings, "levels_off": wrong, "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    err = np.array([r["err_mm"] for r in rows])
    tol = np.array([max(3.0, r["dz"]) for r in rows])
    print("\n| group | n | median error mm | max error mm | within 3 mm | within one slice or 3 mm | flagged | "
          "misses with a warning |")
    print("|---|---|---|---|---|---|---|---|")
    groups = {"all": [True] * len(rows)}
    for key in ("fov", "dz", "variant"):
        for value in sorted({r[key] for r in rows}, key=str):
            groups[f"{key}={value}"] = [r[key] == value for r in rows]
    for name, sel in groups.items():
        sel = np.array(sel)
        e = err[sel]
        flags = sum(r["flagged"] for r, s_ in zip(rows, sel) if s_)
        misses = [r for r, s_, t in zip(rows, sel, tol) if s_ and r["err_mm"] > t]
        print(f"| {name} | {sel.sum()} | {np.median(e):.1f} | {e.max():.1f} | {np.mean(e <= 3.0):.0%} | "
              f"{np.mean(e <= tol[sel]):.0%} | {flags}/{sel.sum()} | "
              f"{sum(r['warned'] for r in misses)}/{len(misses)} |")
    return 0


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="synthetic volumes -> projections + level centres (.npz)")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--torso", type=int, default=0, help="number of torso phantoms")
    g.add_argument("--labelmap", type=int, default=0, help="number of CTs synthesised from the real label maps")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--prefix", default="torso", help="file name prefix ('heldout' marks held-out volumes)")
    t = sub.add_parser("train", help="train the projection network on generated projections")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--steps", type=int, default=900)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--max-minutes", type=float, default=20.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init", type=Path, default=None, help="start from these weights (.safetensors)")
    t.add_argument("--warmup", type=float, default=0.1, help="share of the steps spent warming up")
    c = sub.add_parser("card", help="measure trained weights on held-out projections and write the model card")
    c.add_argument("--data", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--threads", type=int, default=2)
    e = sub.add_parser("evaluate", help="full detector on fresh held-out torso volumes: accuracy table")
    e.add_argument("--n", type=int, default=24)
    e.add_argument("--seed", type=int, default=7000)
    e.add_argument("--size", type=int, default=256)
    e.add_argument("--card", type=Path, default=None)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--variants", choices=("all", "transitional"), default="all",
                   help="transitional: only the grid's transitional variants (the same volumes as the full run)")
    args = parser.parse_args(argv)
    if args.command == "card":
        return write_card(args)
    if args.command == "evaluate":
        return evaluate(args)
    if args.command == "train":
        return train(args)
    if args.command == "generate":
        args.out.mkdir(parents=True, exist_ok=True)
        if args.labelmap:
            generate_labelmap_samples(args.out, args.labelmap, args.seed)
        if args.torso:
            generate_torso_samples(args.out, args.torso, args.seed, args.prefix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
