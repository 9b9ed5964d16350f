"""R-score of the converged weak-constraint 4DVar (Gauss-Newton, <= 20 it.) on F21-L63
test windows for several model-error variances Q (R = 2), and for the mean-form cost
(the authors' normalisation) with lam_obs = 0.01, 0.1 and lam_prior = 1."""
import sys, time
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np
import jax, jax.numpy as jnp
import _f21 as ex

n_test = int(sys.argv[1]) if len(sys.argv) > 1 else 256
s = ex.setup("l63", 0, 64, n_test)
x0 = ex.first_guess(s)
args = (s.test.obs.values, s.test.obs.mask, x0)
def run(r_var, q_var, label):
    t0 = time.perf_counter()
    x, it = ex.gauss_newton(s.preset, r_var, q_var, 20, 64)(*args)
    r = float(jnp.mean((x - s.test.truth) ** 2))
    fv = ex.fourdvar_scores(s.norm.apply(x), s.obs_te, s.rk4)
    err = np.asarray(jnp.mean((x - s.test.truth) ** 2, axis=(1, 2)))
    print(f"{label:28s} R-score {r:7.3f}  median {np.median(err):6.3f}  "
          f"far(>10) {np.mean(err > 10):.3f}  4DVar-score {fv:.3e}  it {float(jnp.mean(it)):.1f}  "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
print("std", np.asarray(s.norm.std), "n_obs", float(s.test.obs.mask.sum()) / n_test)
for q in (0.01, 0.02, 0.1, 0.3, 0.55, 1.0):
    run(2.0, q, f"R=2 Q={q}")
for lo in (0.01, 0.1):
    rv, qv = ex.cost_variances(s, lo, 1.0)
    run(rv, qv, f"mean-form lam_obs={lo}")
