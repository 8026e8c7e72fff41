"""``run.reproducible_cpu``: the same training result, bit for bit, on every x86-64 CPU with AVX2.

PyTorch picks its CPU kernels at run time from the processor's features, so one run rounds
differently on an AVX-512 Xeon and on an AVX2 EPYC, and training grows those last-bit differences
into a different model. Measured on the demo config, each of three sources alone changes the
weights after 10 steps, and the thread count does too:

* ATen's vectorised kernels (softmax, norms, reductions, ``normal_``): chosen by the CPU's widest
  ISA -> pinned with ``ATEN_CPU_CAPABILITY=avx2``, which every x86-64 CPU with AVX2 runs.
* MKL's GEMM: the code path depends on the ISA and on the CPU vendor -> ``MKL_CBWR=COMPATIBLE``,
  the one MKL reproducibility branch documented for Intel and non-Intel CPUs alike (SSE2 only).
* Convolution (the patch embedding): oneDNN's JIT kernels depend on the ISA, and NNPACK (what
  torch takes next) tiles by the CPU's cache sizes; both are disabled while training, so it runs
  as im2col + the GEMM above (``portable_kernels``).
* Reductions are split by thread: the config must fix ``run.num_threads``.

Torch and MKL read both variables once, at their first kernel, so ``apply_env`` must run before
the process computes anything with torch (``ucofia train`` does it before building the model);
``problems`` tells afterwards whether they took effect. Torch-free at import.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from collections.abc import Iterator, MutableMapping
from pathlib import Path

ENV: dict[str, str] = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}
ATEN_CAPABILITY = "AVX2"  # what torch.backends.cpu.get_cpu_capability() reports once pinned
MKL_CBWR_COMPATIBLE = 3  # MKL's named constant for the COMPATIBLE branch
X86 = ("x86_64", "amd64")


def _has_avx2() -> bool:
    """AVX2 (and FMA, which ATen's AVX2 kernels also use) on this CPU; reads no torch kernel state."""
    import torch

    return bool(torch.cpu._is_avx2_supported())


def apply_env(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Pin the kernels through the environment (before torch's first op); a note when it cannot.

    Overrides values already set: the run asked for the portable numbers. On a CPU without AVX2
    ATen keeps its own choice (forcing avx2 there would crash), so only MKL is pinned.
    """
    env = os.environ if environ is None else environ
    if platform.machine().lower() not in X86:
        return (f"run.reproducible_cpu pins x86-64 kernels; on this {platform.machine()} CPU results "
                "match only runs on the same kind of CPU")
    env["MKL_CBWR"] = ENV["MKL_CBWR"]
    if not _has_avx2():
        return ("this CPU has no AVX2: PyTorch keeps its own kernels, so results will differ from "
                "those of AVX2 CPUs (run.reproducible_cpu)")
    env["ATEN_CPU_CAPABILITY"] = ENV["ATEN_CPU_CAPABILITY"]
    return None


def _mkl_branch() -> int | None:
    """MKL's reproducibility branch in this process (None: MKL not found or not queryable).

    Torch links MKL statically and exports only MKL's internal ``mkl_serv_cbwr_get``; the first
    call reads MKL_CBWR if MKL had not started yet, which is exactly the state a GEMM would use.
    """
    import torch

    if not torch.backends.mkl.is_available():
        return None
    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        get = ctypes.CDLL(str(lib)).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype = ctypes.c_int
    return int(get(1))  # 1: MKL_CBWR_BRANCH, the branch in use


def problems() -> list[str]:
    """Why the pinned kernels are not in effect in this process (empty when they are)."""
    import torch

    if platform.machine().lower() not in X86 or not _has_avx2():
        return []  # apply_env already said what cannot be pinned here
    found = []
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != ATEN_CAPABILITY:
        found.append(f"PyTorch runs its {capability} kernels, not {ATEN_CAPABILITY}")
    branch = _mkl_branch()
    if branch is not None and branch != MKL_CBWR_COMPATIBLE:
        found.append("MKL is not in its COMPATIBLE reproducibility mode")
    return found


@contextlib.contextmanager
def portable_kernels(enabled: bool) -> Iterator[None]:
    """While training, when ``enabled``: oneDNN and NNPACK off (convolution by im2col + GEMM); restored after."""
    import torch

    if not enabled:
        yield
        return
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with torch.backends.nnpack.flags(enabled=False):
            yield
    finally:
        torch.backends.mkldnn.enabled = previous


def env_hint() -> str:
    """The shell prefix that pins the kernels for any process."""
    return " ".join(f"{k}={v}" for k, v in ENV.items())


__all__ = ["ENV", "apply_env", "env_hint", "portable_kernels", "problems"]
