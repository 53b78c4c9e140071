"""Pure-PyTorch references of every op in :mod:`wsss_fast.ops`, with the same signatures.

They are the ground truth the kernels are tested against, the fallback when the
compiled extension is missing, and the baselines of the benchmarks.
"""
