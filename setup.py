"""Build script for the ``wsss_fast._C`` extension.

The C++ (CPU) kernels are always built. The CUDA kernels are built when nvcc and
a CUDA build of torch are both present, or when ``FORCE_CUDA=1``; ``WITH_CUDA=0``
skips them. ``TORCH_CUDA_ARCH_LIST`` and ``MAX_JOBS`` are honoured; when no GPU is
visible the arch list defaults to a short one (see ``DEFAULT_ARCH_LIST``).

Environment:
    WITH_CUDA=0            never build the CUDA kernels.
    FORCE_CUDA=1           build them even if torch or nvcc look unsuitable.
    TORCH_CUDA_ARCH_LIST   e.g. "9.0" or "8.0;9.0+PTX".
    MAX_JOBS               parallel compile jobs (ninja).
    WSSS_FAST_NO_EXT=1     install the Python package only (the Makefile uses this
                           and builds the extension in place, incrementally).
    WSSS_FAST_DEBUG=1      build with -O0 -g.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "9.0"


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.strip().lower() not in ("0", "false", "no", "off")


def _nvcc_version(cuda_home: str | None) -> str | None:
    if not cuda_home:
        return None
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not os.path.exists(nvcc):
        return None
    try:
        out = subprocess.check_output([nvcc, "--version"], text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def _cuda_extra_includes(cuda_home: str | None) -> list[str]:
    """Header folders of the CUDA libraries that torch's headers include.

    ATen/cuda/CUDAContext.h includes cusparse.h and cublas_v2.h. A minimal toolkit (as on
    these machines) lacks them, but the pip-installed torch ships them under
    ``site-packages/nvidia/*/include``; use those when the toolkit has none.
    """
    if cuda_home and os.path.exists(os.path.join(cuda_home, "include", "cusparse.h")):
        return []
    found: list[str] = []
    for base in sys.path:
        for inc in sorted(glob.glob(os.path.join(base, "nvidia", "*", "include"))):
            if os.path.exists(os.path.join(inc, "cusparse.h")) or os.path.exists(
                os.path.join(inc, "cublas_v2.h")
            ):
                found.append(inc)
    return found


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    with_cuda_env = _env_flag("WITH_CUDA")
    force_cuda = bool(_env_flag("FORCE_CUDA"))
    nvcc_version = _nvcc_version(CUDA_HOME)
    torch_cuda = torch.version.cuda
    if with_cuda_env is False:
        with_cuda = False
        reason = "WITH_CUDA=0"
    elif force_cuda:
        with_cuda = True
        reason = "FORCE_CUDA=1"
    elif torch_cuda is None:
        with_cuda = False
        reason = "torch is a CPU-only build"
    elif nvcc_version is None:
        with_cuda = False
        reason = "nvcc not found (set CUDA_HOME)"
    else:
        with_cuda = True
        reason = "nvcc and a CUDA build of torch are present"

    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))

    debug = bool(_env_flag("WSSS_FAST_DEBUG"))
    opt = ["-O0", "-g"] if debug else ["-O3"]
    define_macros: list[tuple[str, str]] = []
    cxx_flags = opt + ["-fopenmp"]
    extra_link = ["-fopenmp"]
    if with_cuda:
        define_macros.append(("WSSS_FAST_WITH_CUDA", "1"))
        major, minor = (torch_cuda or nvcc_version or "0.0").split(".")[:2]
        define_macros.append(("WSSS_FAST_CUDA_VERSION", str(int(major) * 1000 + int(minor) * 10)))

    print("=" * 72)
    print("wsss_fast build settings")
    print(f"  torch                 {torch.__version__} (CUDA {torch_cuda})")
    print(f"  CUDA_HOME             {CUDA_HOME}")
    print(f"  nvcc                  {nvcc_version}")
    print(f"  CUDA kernels          {'yes' if with_cuda else 'no'} ({reason})")
    print(f"  TORCH_CUDA_ARCH_LIST  {os.environ.get('TORCH_CUDA_ARCH_LIST', '(torch default)')}")
    print(f"  MAX_JOBS              {os.environ.get('MAX_JOBS', '(default)')}")
    print(f"  sources               {len(sources)} C++, {len(cuda_sources) if with_cuda else 0} CUDA")
    print(f"  flags                 {' '.join(opt)}")
    print("=" * 72)
    if with_cuda and torch_cuda and nvcc_version and torch_cuda.split(".")[:2] != nvcc_version.split(".")[:2]:
        print(
            f"WARNING: nvcc is CUDA {nvcc_version} but torch was built with CUDA {torch_cuda}; "
            "the extension may fail to load. Point CUDA_HOME at a matching toolkit.",
            file=sys.stderr,
        )

    include_dirs = [os.path.join(ROOT, "csrc")]
    if with_cuda:
        extra = _cuda_extra_includes(CUDA_HOME)
        if extra:
            print(f"  extra CUDA includes   {' '.join(extra)}")
        include_dirs += extra
        nvcc_flags = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
        return [
            CUDAExtension(
                "wsss_fast._C",
                sources + cuda_sources,
                include_dirs=include_dirs,
                define_macros=define_macros,
                extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                extra_link_args=extra_link,
            )
        ]
    return [
        CppExtension(
            "wsss_fast._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=extra_link,
        )
    ]


def main() -> None:
    if _env_flag("WSSS_FAST_NO_EXT"):
        setup()
        return
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=_extensions(),
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
