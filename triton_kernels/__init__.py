"""Triton kernels of ponder, one module per op family. Installed as ``ponder.triton_kernels``.

Call them through ``ponder.ops`` (which validates inputs); these modules only launch kernels.
"""
