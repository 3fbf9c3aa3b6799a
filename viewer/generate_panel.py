"""The 'Generate' GUI folder: a prompt, a seed and a button that calls ``recon3d.generate``.

Shown only when the generator can be imported (checked once at start-up); the checkpoint itself loads on
the first click, and any failure is reported in the panel rather than taking the server down.
"""

from __future__ import annotations

import importlib
import threading

from .host import PanelHost


def generator_available() -> bool:
    """True when ``recon3d.generation.api.generate`` imports."""
    try:
        module = importlib.import_module("recon3d.generation.api")
    except Exception:  # not built yet, or a dependency missing: no panel
        return False
    return callable(getattr(module, "generate", None))


class GeneratePanel:
    """Prompt + seed + button; the generated scene replaces the one shown."""

    def __init__(self, app: PanelHost) -> None:
        self.app = app
        self._busy = threading.Lock()
        gui = app.server.gui
        with gui.add_folder("Generate", expand_by_default=False):
            self.prompt = gui.add_text("Prompt", initial_value="a red cube on top of a blue sphere")
            self.seed = gui.add_number("Seed", initial_value=0, min=0, max=2**31 - 1, step=1)
            self.button = gui.add_button("Generate")
            self.status = gui.add_markdown("")
        self.button.on_click(lambda _event: threading.Thread(target=self.run, daemon=True).start())

    def run(self) -> bool:
        """Generate from the current prompt and seed and show the result; False on failure."""
        if not self._busy.acquire(blocking=False):
            return False
        try:
            from recon3d.generation.api import generate

            prompt = str(self.prompt.value).strip()
            self.button.disabled = True
            self.status.content = f"generating “{prompt}” …"
            scene = generate(prompt, seed=int(self.seed.value))
            self.app.set_scene(scene, source=f"generated: “{prompt}” (seed {int(self.seed.value)})")
            self.status.content = f"generated {len(scene):,} Gaussians"
            return True
        except Exception as exc:  # e.g. an empty prompt or a missing checkpoint: say so in the panel
            self.status.content = f"generation failed: {exc}"
            return False
        finally:
            self.button.disabled = False
            self._busy.release()
