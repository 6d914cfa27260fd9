"""The C allocator's settings for PyTorch on CPU (`train.heap_allocations`).

glibc serves every allocation above its mmap threshold (32 MB at most) with fresh mmap'ed pages
and unmaps them on free, and it gives freed memory at the top of its heap back to the kernel
above a trim threshold; either way the kernel faults in and zeroes those pages again at every
training step. EfficientNet-Lite's activations at 160 px are that large: a Lite0 step (batch 64,
what Replay trains on) took 4.15 s with 2.76 s of it in the kernel, and 2.43 s with 0.04 s once
both are off (peak memory 3.7 -> 4.2 GB; `python benchmarks/allocator.py` measures a training). PyTorch has no
CPU caching allocator to do this (its caching allocator is CUDA's), and glibc's MALLOC_*
environment variables only work if set before the process starts, so the settings are made
here, through mallopt, when a training starts.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from dfcl.config import TrainConfig

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
KEEP_FREED = 1 << 30  # bytes of freed heap kept for reuse before glibc trims; above one step's needs


def apply_heap_allocations(train_params: TrainConfig) -> bool:
    """What every training calls first (pipeline and bare benchmark loops alike, so their speeds
    compare): keep large tensors on the heap if `train.heap_allocations` says so."""
    return bool(train_params.heap_allocations) and keep_large_allocations_on_the_heap()


def keep_large_allocations_on_the_heap() -> bool:
    """No mmap for large blocks and no trimming below 1 GB, on glibc; True if both were set.
    A no-op elsewhere (macOS, musl) and when MALLOC_MMAP_MAX_ is in the environment (the user's
    own choice wins). Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536; this overrides it."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_MAX_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED) == 1
    except (OSError, AttributeError):
        return False
