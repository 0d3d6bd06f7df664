"""Langevin-family samplers on ponder's fused step kernels (filled in below as modules land)."""
