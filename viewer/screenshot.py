"""Screenshot of the viewer in headless Chromium (how ``docs/viewer.png`` is made).

Run: ``python -m recon3d.viewer.screenshot TARGET -o docs/viewer.png [--renderer recon3d]``. Needs Debian's
``chromium`` (``apt-get install chromium``) and ``pip install playwright``; downloads nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-quic", "--enable-unsafe-swiftshader",
]  # fmt: skip


def screenshot(target: str | Path, output: str | Path, *, width: int = 1280, height: int = 800,
               renderer: str = "browser splats", settle_seconds: float = 8.0,
               chromium: str = "/usr/bin/chromium", crop_to_bounds: bool = False) -> Path:
    """Open ``target`` in the viewer, load it in headless Chromium and save a PNG of the page."""
    from playwright.sync_api import sync_playwright

    from recon3d.io_utils import atomic_write_bytes

    from .app import ViewerApp
    from .source import load_target

    app = ViewerApp(load_target(target), port=0)
    if crop_to_bounds:  # the Crop panel ticked with its default box: the robust bounds
        app.gui_crop.value = True
        app.set_crop(app._bounds)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(app.url)
            page.get_by_text("Connected").first.wait_for(timeout=60_000)
            client = app.wait_for_client(timeout=60)
            # the software-WebGL notice is true but not what a screenshot should show
            page.add_style_tag(content='[class*="mantine-Notification"] { display: none !important; }')
            if renderer != "browser splats":
                app.gui_renderer.value = renderer
                app.set_renderer(renderer)
            time.sleep(settle_seconds)
            if renderer == "recon3d":
                deadline = time.time() + 600
                while time.time() < deadline:
                    view = app.views.get(client.client_id)
                    if view is not None and view.full_done and view.last_frame and view.last_frame["full"]:
                        break
                    time.sleep(0.5)
                time.sleep(2.0)
            png = page.screenshot(timeout=300_000)  # software WebGL with many splats draws slowly
            browser.close()
    finally:
        app.stop()
    output = Path(output)
    atomic_write_bytes(output, png)
    return output


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target", help="run directory or .ply")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--renderer", default="browser splats", choices=("browser splats", "recon3d"))
    p.add_argument("--settle", type=float, default=8.0, help="seconds to let software WebGL draw")
    p.add_argument("--crop-to-bounds", action="store_true", help="tick 'Crop to box' (the robust bounds) first")
    args = p.parse_args(argv)
    out = screenshot(args.target, args.output, width=args.width, height=args.height, renderer=args.renderer,
                     settle_seconds=args.settle, crop_to_bounds=args.crop_to_bounds)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
