"""Batch throughput: windows per second against batch size and against device count.

Problem `B24-L63`-sized windows (Lorenz-63, T = 32, n = 3, d = 96). Methods:

- `map_precision-band`: `jaxda.gaussian.map_precision` with a banded prior precision
  (bandwidth 2n = 6, shared by the batch) and a per-window mask and observations;
- `4dvar-cost-grad`: value and gradient of the weak-constraint 4DVar cost (RK4 flow
  map, dt 0.025) of one window.

Both are `jax.vmap`-ed over the batch under `jax.jit`. `time_per_window_s` is the
median batch time divided by the batch size, `windows_per_s` its inverse.

Device scaling (`sharded-map_precision`, `sharded-4dvar-cost-grad`) runs the same
computations through `jaxda.sharding.sharded_vmap` in subprocesses that see
`n_devices` devices: on CPU they are simulated with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (they share the machine's cores,
so throughput can only grow up to the core count); when an accelerator platform has
several devices, the subprocess uses the first `n_devices` of them. Records carry
`n_devices`.

    python benchmarks/bench_throughput.py --worker N BATCH SUITE   # one subprocess
"""

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from _common import record, time_call


T, N = 32, 3
_BATCHES = {"quick": [1, 8, 64, 512], "full": [1, 4, 16, 64, 256, 1024, 4096]}
_DEVICES = {"quick": [1, 2, 4], "full": [1, 2, 4, 8]}
_DEVICE_BATCH = {"quick": 512, "full": 4096}


def _problems(batch: int, seed: int = 0):
    """Per-window inputs of both methods, with a leading batch axis."""
    from jaxda.models import Lorenz63, flow_map, rollout

    rng = np.random.default_rng(seed)
    dtype = jnp.result_type(float)
    d = T * N
    band = rng.uniform(-0.3, 0.3, (2 * N + 1, d))
    band[0] = 2.0 * (2 * N) * 0.3 + 1.0  # diagonally dominant: SPD
    flow = flow_map(Lorenz63(), 0.025)
    x0 = rollout(flow, jnp.array([1.0, 2.0, 20.0], dtype), 400)[-1]
    truth = rollout(flow, x0, T - 1 + batch)  # overlapping windows of one trajectory
    idx = np.arange(T)[None, :] + np.arange(batch)[:, None]
    windows = truth[idx]  # (batch, T, 3)
    mask = np.zeros((batch, T, N), bool)
    for b in range(batch):
        mask[b, b % 8 :: 8, 0] = True
    y = np.where(mask, np.asarray(windows) + 0.05 * rng.normal(size=mask.shape), 0.0)
    return {
        "band": jnp.asarray(band, dtype),
        "flow": flow,
        "mu": jnp.zeros((batch, T, N), dtype),
        "y": jnp.asarray(y, dtype),
        "mask": jnp.asarray(mask),
        "x": jnp.asarray(windows, dtype) + 0.1,
    }


def _map_fn(band, mu, y, mask):
    from jaxda.gaussian import map_precision
    from jaxda.linalg import SymmetricBandMatrix

    return map_precision(mu, SymmetricBandMatrix(band), y, mask, 0.0025).mean


def _grad_fn(flow):
    from jaxda.obs import Observations
    from jaxda.var import WeakConstraint4DVar

    def cost_grad(x, y, mask):
        problem = WeakConstraint4DVar(flow, Observations(y, mask), 0.0025, 0.025)
        return jax.value_and_grad(problem.cost)(x)

    return cost_grad


def _methods(p):
    """`(name, batched_fn, args, one_window_fn, in_axes)` for both methods."""
    grad = _grad_fn(p["flow"])
    return [
        (
            "map_precision-band",
            jax.jit(jax.vmap(_map_fn, in_axes=(None, 0, 0, 0))),
            (p["band"], p["mu"], p["y"], p["mask"]),
            _map_fn,
            (None, 0, 0, 0),
        ),
        (
            "4dvar-cost-grad",
            jax.jit(jax.vmap(grad)),
            (p["x"], p["y"], p["mask"]),
            grad,
            0,
        ),
    ]


def _batch_records(suite: str) -> Iterator[dict]:
    for batch in _BATCHES[suite]:
        p = _problems(batch)
        for name, fn, args, _, _ in _methods(p):
            compile_s, run_s = time_call(fn, *args)
            yield record(
                "B24-L63",
                name,
                batch=batch,
                n_devices=1,
                time_per_window_s=run_s / batch,
                windows_per_s=batch / run_s,
                compile_s=compile_s,
            )


def _worker(n_devices: int, batch: int) -> list[dict]:
    """Sharded throughput on `n_devices` devices (run in a subprocess)."""
    from jaxda import sharding

    devices = jax.devices()[:n_devices]
    if len(devices) < n_devices:
        raise RuntimeError(f"asked for {n_devices} devices, found {len(devices)}")
    mesh = sharding.batch_mesh(devices)
    p = _problems(batch)
    out = []
    for name, _, args, one, in_axes in _methods(p):
        fn = sharding.sharded_vmap(one, mesh, in_axes=in_axes)
        # Place the inputs once (the timed calls then find them in place).
        axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
        args = tuple(
            sharding.shard_batch(a, mesh) if ax == 0 else sharding.replicate(a, mesh)
            for a, ax in zip(args, axes)
        )
        compile_s, run_s = time_call(fn, *args)
        out.append(
            record(
                "B24-L63",
                f"sharded-{name}",
                batch=batch,
                n_devices=n_devices,
                platform=devices[0].platform,
                time_per_window_s=run_s / batch,
                windows_per_s=batch / run_s,
                compile_s=compile_s,
            )
        )
    return out


def _device_records(suite: str) -> Iterator[dict]:
    accel = jax.default_backend() != "cpu" and len(jax.devices()) > 1
    for n in _DEVICES[suite]:
        if accel and n > len(jax.devices()):
            break
        env = dict(os.environ)
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        if not accel:
            env["JAX_PLATFORMS"] = "cpu"
            flag = f"--xla_force_host_platform_device_count={n}"
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
        if jax.config.read("jax_enable_x64"):
            env["JAX_ENABLE_X64"] = "1"
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            str(n),
            str(_DEVICE_BATCH[suite]),
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            continue
        for line in proc.stdout.splitlines():
            if line.startswith("RECORDS "):
                for rec in json.loads(line[len("RECORDS ") :]):
                    rec["simulated_devices"] = not accel
                    yield rec


def records(suite: str) -> Iterator[dict]:
    yield from _batch_records(suite)
    yield from _device_records(suite)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--worker":
        recs = _worker(int(sys.argv[2]), int(sys.argv[3]))
        print("RECORDS " + json.dumps(recs), flush=True)
    else:
        for rec in records(sys.argv[1] if len(sys.argv) > 1 else "quick"):
            print(json.dumps(rec), flush=True)
