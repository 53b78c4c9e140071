"""Pure-PyTorch references of every op in :mod:`wsss_fast.ops`, with the same signatures.

They are the ground truth the kernels are tested against, the fallback when the
compiled extension is missing, and the baselines of the benchmarks. They assume valid
arguments: the public ops in :mod:`wsss_fast.ops` check them (``wsss_fast/ops/_utils.py``)
before they call a kernel or a reference. A reference never imports from :mod:`wsss_fast.ops`.
"""
