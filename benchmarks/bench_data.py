"""Dataset generation throughput of the reference presets (`jaxda.data`).

For each preset, `make_preset_dataset(name, key, n_windows=N)` generates N training
windows at the paper's window length with the preset's default (adaptive Tsit5) solver,
including burn-in, process noise, observation masks, noise and, for B24-L63, the
normalisation. `time_per_window_s` is the median wall time of one call divided by N;
`compile_s` is the first call's extra time. Accuracy-like fields check the data: the
fraction of observed entries and the empirical observation-noise standard deviation
against the preset's.
"""

from collections.abc import Iterator

import jax
import numpy as np
from _common import record, time_call

import jaxda.data as jd


_SIZES = {"quick": 64, "full": 1024}


def records(suite: str) -> Iterator[dict]:
    n = _SIZES[suite]
    for name in jd.PRESET_NAMES:
        preset = jd.get_preset(name)

        def generate(key, name=name):
            ds = jd.make_preset_dataset(name, key, n_windows=n)
            return ds.truth, ds.obs

        key = jax.random.key(0)
        compile_s, run_s = time_call(generate, key, repeats=3, min_time=0.5)
        truth, obs = generate(key)
        mask = np.asarray(obs.mask)
        err = (np.asarray(obs.values) - np.asarray(truth))[mask]
        yield record(
            name,
            "make_dataset",
            batch=n,
            n_times=preset.n_times,
            state_size=int(np.prod(preset.model.state_shape)),
            solver=preset.solver,
            burn_in_steps=preset.burn_in_steps,
            observed_fraction=float(mask.mean()),
            obs_noise_std_empirical=float(err.std()),
            obs_noise_std=preset.noise_std,
            time_per_window_s=run_s / n,
            windows_per_s=n / run_s,
            run_s=run_s,
            compile_s=compile_s,
        )
