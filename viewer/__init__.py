"""The recon3d viewer (viser)."""
