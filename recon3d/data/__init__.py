"""recon3d.data."""
