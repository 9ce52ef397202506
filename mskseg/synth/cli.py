"""``mskseg synth ...``: look at the synthetic training data.

``mskseg synth preview --out gallery.png [--n 12] [--seed 0] [--real PATH] [--overwrite]`` writes a PNG grid
of synthetic L3 phantoms with tissue contours; with ``--real`` the middle axial slice of a real CT is shown
first, in the same soft-tissue window, for comparison.
"""
from __future__ import annotations

import argparse

from ..errors import InvalidImageError


def add_synth_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``synth`` subcommand (with ``preview``) to the ``mskseg`` parser's subparsers.

    Returns:
        The ``synth`` parser; its parsed namespace has ``command == "synth"`` and ``synth_command``.
    """
    s = subparsers.add_parser("synth", help="synthetic training data: preview the L3 phantoms",
                              description="Synthetic anatomy used to train MSKSeg's models. 'preview' draws "
                                          "a gallery of L3 phantoms with tissue contours, optionally beside a "
                                          "real CT slice.")
    sub = s.add_subparsers(dest="synth_command", metavar="SYNTH_COMMAND")
    p = sub.add_parser("preview", help="write a PNG gallery of synthetic L3 slices with tissue contours",
                       description="Draw N synthetic L3 phantoms (deterministic for --seed) in a soft-tissue "
                                   "window with muscle, subcutaneous, visceral and intermuscular fat outlined. "
                                   "--real shows the middle axial slice of a real CT first, for comparison.")
    p.add_argument("--out", required=True, metavar="PNG", help="output PNG file")
    p.add_argument("--n", type=int, default=12, help="number of synthetic samples (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    p.add_argument("--real", metavar="PATH", help="real CT (DICOM folder or volume file) shown beside them")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return s


def run_synth(args: argparse.Namespace) -> int:
    """Run a parsed ``mskseg synth ...`` command; returns the exit status (0 success).

    Raises:
        MSKSegError: bad input (unreadable ``--real`` image, existing output without ``--overwrite``,
            ``--n`` below 1).
    """
    from .preview import write_gallery

    if getattr(args, "synth_command", None) != "preview":
        raise InvalidImageError("no synth command given", "use: mskseg synth preview --out gallery.png")
    if args.n < 1:
        raise InvalidImageError(f"--n must be at least 1, got {args.n}", "give the number of samples, e.g. --n 12")
    real = []
    if args.real:
        from ..io import read_image

        img = read_image(args.real)
        real.append(img.axial_slice(img.array.shape[0] // 2) if img.ndim == 3 else img)
    out = write_gallery(args.out, n=args.n, seed=args.seed, real_slices=real, overwrite=args.overwrite)
    print(f"wrote {out}: {args.n} synthetic L3 slices (seed {args.seed})"
          + (f" beside the middle slice of {args.real}" if real else ""))
    return 0
