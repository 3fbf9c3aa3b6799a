"""recon3d.train."""
