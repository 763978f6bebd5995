"""Super-resolution numerics: the metrics SR papers report.

Modules: `metrics` (luma conversion, border shaving, PSNR and SSIM, and the
PSNR-Y / SSIM-Y protocol of the SR benchmarks). Imports only jax/numpy; usable
without the training loop.

Importing this package does no I/O.
"""
