"""Flushing subnormal floats inside onnxruntime runs only, never in the caller's code.

The runtime's sessions ask onnxruntime to flush subnormal floats to zero (``set_denormal_as_zero``:
the ISA softmaxes at temperature 0.01 make them, and flushing makes the scorer ~3x faster on x86).
onnxruntime does it by setting the FTZ/DAZ bits of the MXCSR register of the thread that creates
the session and leaves them set, so every later float operation of that thread (numpy, torch)
flushes subnormals too: results of code sharing the process would depend on whether a session was
made first (``ucofia parity`` runs PyTorch and the runtime in one process), and runs on other
threads would not flush at all.

:func:`preserved` puts the calling thread's floating-point environment (the C library's
``fegetenv``; on x86 it holds the MXCSR) back as it was; :func:`flushing` sets FTZ/DAZ for the
body only (x86-64 Linux, where glibc's ``fenv_t`` layout is known) and restores the caller's after.
Where the C library has no ``fegetenv`` both do nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

# bytes reserved for a fenv_t (32 on x86-64 glibc; generous for other C libraries)
FENV_BYTES = 256
# glibc x86-64 fenv_t: the 28-byte x87 environment, then the 32-bit MXCSR
MXCSR_OFFSET = 28
FTZ_DAZ = 0x8000 | 0x0040  # flush-to-zero (bit 15) and denormals-are-zero (bit 6)


@lru_cache(maxsize=1)
def _libm():
    """The C maths library's fegetenv/fesetenv (glibc: libm; macOS: libSystem), or None."""
    for name in ("m", "c"):
        try:
            lib = ctypes.CDLL(ctypes.util.find_library(name) or None)
            lib.fegetenv.argtypes = lib.fesetenv.argtypes = [ctypes.c_void_p]
            return lib
        except (OSError, AttributeError, TypeError):
            continue
    return None


def _mxcsr_in_fenv() -> bool:
    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


@contextmanager
def preserved() -> Iterator[None]:
    """Run the body and put the calling thread's floating-point environment back as it was."""
    lib = _libm()
    if lib is None:
        yield
        return
    saved = ctypes.create_string_buffer(FENV_BYTES)
    lib.fegetenv(saved)
    try:
        yield
    finally:
        lib.fesetenv(saved)


@contextmanager
def flushing() -> Iterator[None]:
    """Run the body with subnormal floats flushed to zero on this thread (where the environment's
    layout is known), then restore the caller's floating-point environment."""
    lib = _libm()
    with preserved():
        if lib is not None and _mxcsr_in_fenv():
            env = ctypes.create_string_buffer(FENV_BYTES)
            lib.fegetenv(env)
            mxcsr = struct.unpack_from("<I", env.raw, MXCSR_OFFSET)[0]
            struct.pack_into("<I", env, MXCSR_OFFSET, mxcsr | FTZ_DAZ)
            lib.fesetenv(env)
        yield
