"""Understanding scenes with the generator's data: a scene encoder and an image encoder into the MiniLM
caption space (``model``), their training (``train``), and ``describe`` (a caption for a scene)."""
