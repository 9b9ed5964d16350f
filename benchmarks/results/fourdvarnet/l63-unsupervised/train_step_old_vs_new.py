"""Old (jaxda at 941e094, before this work) vs new training step, one process,
interleaved timing rounds. F21-L63 windows, K=10, batch B, float32, supervised loss
with prior_weight 0.1, Adam. Same architecture both sides: GENN width 30, kernel 11,
pool 4, coarse branch in the state channels (13,356 parameters; the old structure),
ConvLSTM hidden 44 (25,124), first-iteration RMS. New also: the authors' GENN (15,300)."""
import sys, time, dataclasses
sys.path.insert(0, "/tmp/fdnD/old"); sys.path.insert(0, "/work/main/benchmarks")
import numpy as np, equinox as eqx, jax, jax.numpy as jnp, optax
import jaxda_old
import jaxda_old.fourdvarnet as ofdn, jaxda_old.train as otrain
import jaxda.fourdvarnet as fdn, jaxda.nn as nn
from jaxda import train
import _f21 as ex

B = int(sys.argv[1]) if len(sys.argv) > 1 else 128
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
which = sys.argv[3].split(",") if len(sys.argv) > 3 else None
s = ex.setup("l63", 0, B, 1)
f32 = lambda t: jax.tree_util.tree_map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, t)
obs_new = f32(s.obs_tr); truth = f32(s.truth_tr)
obs_old = jaxda_old.obs.Observations(obs_new.values, obs_new.mask)
k1, k2 = jax.random.split(jax.random.key(0))
def old_model():
    g = ofdn.GENN((3,), key=k1, width=30, kernel_size=11, pool=4)
    so = ofdn.ConvLSTMSolver((3,), key=k2, hidden=44)
    return f32(ofdn.FourDVarNet(ofdn.VariationalCost(g), so, n_iter=10))
def new_model(method, coarse=3, checkpoint=False, lstm=True):
    g = fdn.GENN((3,), key=k1, width=30, kernel_size=11, pool=4, coarse_channels=coarse, conv_method=method)
    if lstm:
        so = fdn.ConvLSTMSolver((3,), key=k2, hidden=44, gradient_rms="first", conv_method=method)
    else:
        so = fdn.CNNSolver((3,), key=k2, conv_method=method)
    return f32(fdn.FourDVarNet(fdn.VariationalCost(g), so, n_iter=10, checkpoint=checkpoint))
opt = optax.adam(1e-3)
cases = {
    "old (0.2.0 code)": (old_model, otrain, ofdn, obs_old),
    "new im2col": (lambda: new_model("im2col"), train, fdn, obs_new),
    "new xla": (lambda: new_model("xla"), train, fdn, obs_new),
    "new xla remat": (lambda: new_model("xla", checkpoint=True), train, fdn, obs_new),
    "new xla authors-GENN": (lambda: new_model("xla", coarse=30), train, fdn, obs_new),
    "new im2col authors-GENN": (lambda: new_model("im2col", coarse=30), train, fdn, obs_new),
    "new xla GENN+CNN": (lambda: new_model("xla", coarse=30, lstm=False), train, fdn, obs_new),
    "new im2col GENN+CNN": (lambda: new_model("im2col", coarse=30, lstm=False), train, fdn, obs_new),
}
if which:
    cases = {k: v for i, (k, v) in enumerate(cases.items()) if str(i) in which}
ready = {}
for name, (mk, tr, f, obs) in cases.items():
    m = mk()
    data = f.make_training_data(obs, truth)
    loss = f.make_fourdvarnet_loss("supervised", prior_weight=0.1)
    st = tr.init_state(m, opt, jax.random.key(1))
    step = tr.make_train_step(loss, opt)
    t0 = time.perf_counter(); out = jax.block_until_ready(step(st, data)); c = time.perf_counter() - t0
    print(f"{name:26s} params {nn.count_parameters(m):6d}  first call {c:6.1f} s  loss {float(out[1]):.4f}", flush=True)
    ready[name] = (step, st, data)
times = {k: [] for k in ready}
for r in range(rounds):
    for name, (step, st, data) in ready.items():
        t0 = time.perf_counter(); jax.block_until_ready(step(st, data)); times[name].append(time.perf_counter() - t0)
base = np.median(times[next(iter(times))])
for name, t in times.items():
    med = np.median(t)
    print(f"{name:26s} {med / B * 1e3:7.2f} ms/window  (x{base / med:.2f} vs first)  all {[round(x / B * 1e3, 1) for x in t]}", flush=True)
