"""``--method nerf``: an instant-ngp-style radiance field (hash grid, small MLPs, occupancy grid) on the same
pipeline as the splats: data, run directory, time budget, resume, evaluation, ``load_run``, export.

- ``reference``: dense PyTorch twins of the kernels (the tests' oracle, the benchmark's baseline)
- ``kernels``: the CPU build of ``cuda/src/nerf_cpu.cpp`` (ctypes) and the autograd functions
- ``field``: the field, its bounds (box or scene contraction), the occupancy grid, ray rendering
- ``trainer``: the training loop and ``NerfModel`` (``RUN/nerf.pt``)
- ``distill``: the field -> a ``GaussianScene`` (``recon3d export RUN --format ply``) and a mesh
"""
