"""recon3d.generation: text-to-scene generation (text encoder, composer, set flow transformer, sampling).

``recon3d.generate(prompt, ...)`` (``generation/api.py``) is the product entry point; ``generation/train.py``
trains the generator from a config tree (``generation/config.py``, presets ``configs/generator-*.yaml``).
"""
