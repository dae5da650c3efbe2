"""The README's "what you will see" figures, from a finished run's own outputs.

    .venv/bin/python scripts/readme_figures.py      # after `make run`; needs Chromium

Writes ``docs/figures/world_samples.png`` (the embedded_world pipeline's figure, scaled) and
``docs/figures/gallery.png`` (the top of ``data/08_reporting/gallery.html`` as headless Chromium
renders it, filtered to images whose hallucination stage 2 fixed).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="a run's data/")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    parser.add_argument("--width", type=int, default=1000, help="pixels of each figure")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Chromium (Debian: apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    reporting = args.data / "08_reporting"

    world = Image.open(reporting / "world_samples.png").convert("RGB")
    world.thumbnail((args.width, args.width))
    # 256 colours: the figures are committed, a third of the size of full colour.
    world.quantize(256).save(args.out / "world_samples.png", optimize=True)

    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "gallery.png"
        page = (reporting / "gallery.html").resolve().as_uri() + "#change=fixed"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--screenshot={shot}",
                f"--window-size={args.width},760",
                page,
            ],
            check=True,
            capture_output=True,
        )
        gallery = Image.open(shot).convert("RGB").quantize(256)
        gallery.save(args.out / "gallery.png", optimize=True)
    logging.getLogger(__name__).info("wrote %s", sorted(args.out.glob("*.png")))


if __name__ == "__main__":
    main()
