"""recon3d.export."""
