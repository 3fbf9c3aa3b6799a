"""``recon3d export RUN --format html``: the page opens from file:// in headless Chromium with every network
request blocked, and draws the scene (coloured pixels where the splats are, background elsewhere)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from recon3d.cli import main
from recon3d.ply import save_ply
from recon3d.scene import GaussianScene

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--enable-unsafe-swiftshader"]  # fmt: skip


def red_ball(n: int = 3000) -> GaussianScene:
    """Opaque saturated-red Gaussians filling a ball: a colour no background or UI element has."""
    g = torch.Generator().manual_seed(0)
    pts = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1) * torch.rand(n, 1, generator=g) ** (1 / 3)
    colors = torch.tensor([[0.95, 0.05, 0.05]]).expand(n, 3)
    return GaussianScene.from_points(pts * 0.5, colors, scale=0.04, opacity=0.95)


def test_html_page_shows_the_scene_offline(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    src = save_ply(red_ball(), tmp_path / "scene.ply")
    assert main(["export", str(src), "--format", "html", "-o", str(tmp_path / "share")]) == 0
    page_path = tmp_path / "share" / "index.html"
    assert page_path.is_file()
    html = page_path.read_text()
    assert "http://" not in html.split("__VISER_EMBED_DATA__")[1][:200]  # the scene is inline, not fetched

    blocked: list[str] = []

    def route(r):
        url = r.request.url
        if url.startswith(("file:", "data:", "blob:")):
            r.continue_()
        else:
            blocked.append(url)
            r.abort()

    pw = sync_api.sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 320, "height": 240})
        page.route("**/*", route)
        page.goto(page_path.resolve().as_uri())
        page.add_style_tag(content='[class*="mantine-Notification"] { display: none !important; }')
        red = 0
        for _ in range(30):  # software WebGL: wait until the splats are drawn (at most ~60 s)
            time.sleep(2.0)
            shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"), dtype=np.int16)
            red = int(((shot[..., 0] > 150) & (shot[..., 1] < 90) & (shot[..., 2] < 90)).sum())
            if red > 500:
                break
        browser.close()
    finally:
        pw.stop()
    assert blocked == [], f"the page asked the network for {blocked[:3]}"
    # The ball covers a good share of the 320×240 view from the export's camera.
    assert red > 500, f"only {red} red pixels: the scene is not drawn"
