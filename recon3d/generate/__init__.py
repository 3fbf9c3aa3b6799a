"""recon3d.generate."""
