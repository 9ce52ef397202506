"""Regenerate README's screenshot ``Resources/Screenshots/SarcopeniaSeg.png`` from the sarcopenia demo.

Runs ``mskseg sarcopenia --demo`` (the synthetic 512 x 512 abdominal CT made on the spot, written as DICOM,
then the whole pipeline) into a temporary folder and stores its ``report.png`` scaled to 1440 pixels wide with
a 256-colour palette (about a quarter of the size of the full report). The figures in the picture are the
demo's own measurements of this version.

    python scripts/make_screenshot.py                 # writes Resources/Screenshots/SarcopeniaSeg.png
    python scripts/make_screenshot.py --out shot.png --keep demo-out/
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "Resources" / "Screenshots" / "SarcopeniaSeg.png"
WIDTH = 1440


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the picture to write (default {DEFAULT_OUT})")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="also keep the demo's files in DIR")
    parser.add_argument("--width", type=int, default=WIDTH, help=f"width in pixels (default {WIDTH})")
    args = parser.parse_args(argv)

    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="mskseg-screenshot-") as tmp:
        demo = Path(tmp) / "demo"
        run = subprocess.run([sys.executable, "-m", "mskseg", "sarcopenia", "--demo", "--out", str(demo)],
                             cwd=REPO, capture_output=True, text=True)
        print(run.stdout, end="")
        if run.returncode != 0:
            print(run.stderr, end="", file=sys.stderr)
            return run.returncode
        with Image.open(demo / "report.png") as report:
            picture = report.convert("RGB")
        height = round(picture.height * args.width / picture.width)
        picture = picture.resize((args.width, height), Image.LANCZOS).quantize(colors=256, method=Image.MEDIANCUT)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        picture.save(args.out, optimize=True)
        if args.keep:
            shutil.copytree(demo, args.keep, dirs_exist_ok=True)
    print(f"wrote {args.out} ({args.width} x {height}, {args.out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
