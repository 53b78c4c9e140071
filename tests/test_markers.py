"""The GPU machine runs ``pytest -m cuda`` (benchmarks/gpu_check.sh): every test that needs CUDA
must carry the mark, also those with ``cuda`` only in their name (tests/conftest.py adds it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cuda_mark_selects_every_cuda_test():
    files = ["tests/ops/test_dense_crf.py", "tests/ops/test_permutohedral_filter.py", "tests/irn/test_ir_label.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p",
                           "no:cacheprovider", *files], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ids = [line.strip() for line in proc.stdout.splitlines() if "::" in line]
    for name in ("test_dense_crf.py::test_cpu_vs_cuda", "test_permutohedral_filter.py::test_cpu_vs_cuda",
                 "test_ir_label.py::test_ir_labels_on_cuda_agree_with_the_cpu_op",
                 "test_dense_crf.py::test_opcheck[cuda]"):
        assert any(i.endswith(name) for i in ids), (name, ids[:5])
    assert not any(i.endswith("[cpu]") for i in ids)  # the CPU cases stay out
