"""Shared benchmark utilities: device description, timing with compile time apart,
atomic text output."""

import platform
import resource
import time
from collections.abc import Callable

import jax

from jaxda.io import atomic_path


def device_name() -> str:
    """Short name of the default JAX device (`cpu-2core-x86_64`, `NVIDIA H100`)."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        import os

        return f"cpu-{os.cpu_count()}core-{platform.machine()}"
    return getattr(dev, "device_kind", dev.platform)


def time_call(fn: Callable, *args, repeats: int = 5, min_time: float = 0.2):
    """Time `fn(*args)` (a jitted function): returns `(compile_s, run_s)`.

    `compile_s` is the first call (trace + compile + one run) minus one run; `run_s` is
    the median of `repeats` timed calls (more when they are fast), each synchronised
    with `jax.block_until_ready`.
    """
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    total = 0.0
    while len(times) < repeats or (total < min_time and len(times) < 1000):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    times.sort()
    run = times[len(times) // 2]
    return max(first - run, 0.0), run


def peak_memory() -> dict:
    """Peak memory so far: the accelerator's `peak_bytes_in_use` where the device
    reports it (`peak_device_memory_mb`), and the process's peak resident memory
    (`peak_rss_mb`; monotone over a run, so it bounds what a record needed)."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["peak_device_memory_mb"] = stats["peak_bytes_in_use"] / 2**20
    return out


def record(problem: str, method: str, **fields) -> dict:
    """One benchmark record with the fields every record carries (device, dtype,
    versions, peak memory so far)."""
    base = {
        "problem": problem,
        "method": method,
        "device": device_name(),
        "backend": jax.default_backend(),
        "dtype": "float64" if jax.config.read("jax_enable_x64") else "float32",
        "jax_version": jax.__version__,
        **peak_memory(),
    }
    base.update(fields)
    return base


def write_text(path, text: str) -> None:
    """Write `text` to `path` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
