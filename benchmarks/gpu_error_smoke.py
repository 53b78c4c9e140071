"""Does a C++ error raised inside a wsss_fast kernel reach Python as a RuntimeError?

    python benchmarks/gpu_error_smoke.py          # prints one line per device, exit 1 on a crash

Each op is called with a bad radius in a child process, on the CPU and on CUDA, so a crash
while unwinding (seen once on a GPU machine whose compiler differs from torch's) is reported
instead of taking the test run down with it.
"""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import sys, torch, wsss_fast.ops
dev = sys.argv[1]
x = torch.rand(1, 2, 5, 6, device=dev)
e = torch.rand(1, 5, 6, device=dev)
try:
    torch.ops.wsss_fast.random_walk(x, e, 0, 10.0, 4)
except RuntimeError as err:
    print(str(err).splitlines()[0][:90])
"""


def main() -> int:
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    bad = 0
    for dev in devices:
        r = subprocess.run([sys.executable, "-c", CHILD, dev], capture_output=True, text=True)
        ok = r.returncode == 0 and "radius" in r.stdout
        bad += not ok
        detail = r.stdout.strip() if ok else f"rc={r.returncode} {r.stderr.strip()[-200:]!r}"
        print(f"C++ error on {dev}: {'raised' if ok else 'CRASHED'}: {detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
