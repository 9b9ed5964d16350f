"""4DVarNet: priors, unrolled solvers, losses, curriculum training, flax adapter."""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import finite_difference_jvp

import jaxda.fourdvarnet as fdn
import jaxda.io as jio
import jaxda.nn as nn
from jaxda import RESULTS
from jaxda.fourdvarnet._model import unroll
from jaxda.models import Lorenz63, flow_map, rollout
from jaxda.obs import Observations
from jaxda.var import WeakConstraint4DVar


T = 16


def _windows(key, n, T=T, every=4):
    x0 = jax.random.normal(key, (n, 3)) * 5.0 + jnp.array([0.0, 0.0, 25.0])
    flow = flow_map(Lorenz63(), 0.01)
    truth = jax.vmap(lambda x: rollout(flow, x, 20 + T - 1)[20:])(x0)
    truth = (truth - jnp.array([0.0, 0.0, 25.0])) / 8.0  # roughly normalised
    mask = jnp.zeros((n, T, 3), bool).at[:, 1::every, 0].set(True)
    noise = 0.1 * jax.random.normal(jax.random.fold_in(key, 1), truth.shape)
    return truth, Observations(jnp.where(mask, truth + noise, 0.0), mask)


def _rk4(x, dt=0.01, s=10.0, r=28.0, b=8.0 / 3.0):
    def f(u):
        return jnp.stack(
            [s * (u[1] - u[0]), r * u[0] - u[1] - u[0] * u[2], u[0] * u[1] - b * u[2]]
        )

    k1 = f(x)
    k2 = f(x + dt / 2 * k1)
    k3 = f(x + dt / 2 * k2)
    k4 = f(x + dt * k3)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def test_cost_equals_weak_constraint_4dvar(getkey):
    truth, obs = _windows(getkey(), 1)
    obs = Observations(obs.values[0] * 8.0, obs.mask[0])
    x = truth[0] * 8.0 + jnp.array([0.0, 0.0, 25.0]) + 0.3
    R, Q = 2.0, 0.05
    prior = fdn.ODEPrior.from_model(Lorenz63(), 0.01)
    cost = fdn.VariationalCost(prior, 1 / (2 * R), 1 / (2 * Q))
    ref = WeakConstraint4DVar(flow_map(Lorenz63(), 0.01), obs, R, Q)
    both = eqx.filter_jit(
        lambda c, r, x: (c(x, obs), r.cost(x), jax.grad(c)(x, obs), jax.grad(r.cost)(x))
    )
    u, j, gu, gj = both(cost, ref, x)
    np.testing.assert_allclose(u, j, rtol=1e-12)
    np.testing.assert_allclose(gu, gj, rtol=1e-10, atol=1e-12)
    # Phi(x)_0 = x_0 and Phi(x)_t = RK4(x_{t-1})
    px = eqx.filter_jit(prior)(x)
    np.testing.assert_array_equal(px[0], x[0])
    np.testing.assert_allclose(px[5], _rk4(x[4]), rtol=1e-12)


def test_fixed_step_unroll_equals_gradient_descent(getkey):
    truth, obs = _windows(getkey(), 1)
    obs = Observations(obs.values[0], obs.mask[0])
    x0 = truth[0] + 0.2 * jax.random.normal(getkey(), truth[0].shape)
    lo, lp, eta, K = 0.7, 3.0, 1e-2, 6
    norm_mean, norm_std = jnp.array([0.0, 0.0, 25.0]), 8.0

    def hand_cost(x):
        z = x * norm_std + norm_mean
        pred = jax.vmap(_rk4)(z[:-1])
        dyn = x[1:] - (pred - norm_mean) / norm_std
        return lo * jnp.sum(
            jnp.where(obs.mask, x - obs.values, 0.0) ** 2
        ) + lp * jnp.sum(dyn**2)

    from jaxda.data import Normalisation

    prior = fdn.ODEPrior.from_model(
        Lorenz63(), 0.01, normalisation=Normalisation(norm_mean, jnp.full(3, norm_std))
    )
    model = fdn.FourDVarNet(
        fdn.VariationalCost(prior, lo, lp), fdn.TrainableStepGradient(eta), n_iter=K
    )
    x_hat, path = eqx.filter_jit(lambda m: m(obs, x0, return_path=True))(model)
    hand_step = jax.jit(lambda x: x - eta * jax.grad(hand_cost)(x))
    x = x0
    want = [x]
    for _ in range(K):
        x = hand_step(x)
        want.append(x)
    np.testing.assert_allclose(path, jnp.stack(want), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(x_hat, path[-1])
    assert jax.jit(hand_cost)(x_hat) < jax.jit(hand_cost)(x0)
    # jax.checkpoint changes memory, not values or derivatives.
    ck = eqx.tree_at(lambda m: m.solver.step_size, model, jnp.asarray(eta))
    ck2 = fdn.FourDVarNet(ck.cost, ck.solver, n_iter=K, checkpoint=True)

    def loss(m):
        return jnp.sum((m(obs, x0) - truth[0]) ** 2)

    grad = eqx.filter_jit(eqx.filter_grad(loss))
    g1, g2 = grad(ck), grad(ck2)
    np.testing.assert_allclose(g1.solver.step_size, g2.solver.step_size, rtol=1e-10)
    assert abs(float(g1.solver.step_size)) > 0


def test_cnn_solver_gradient_rms(getkey):
    # A network C that returns zeros makes the f21 CNN solver
    # x <- x - 5 atan(0.2 W3 alpha grad(x) / rho) with W3 = I: rho is the RMS of the
    # current gradient ("each", the default) or of the first one ("first"). The
    # "small" architecture (jaxda 0.2.0) with a network passing the scaled gradient
    # through is x <- x - atan(grad / rho). A quartic cost makes the two rho differ.
    class Zero(eqx.Module):
        def __call__(self, z):  # (2 C, T): [previous update, scaled gradient]
            return jnp.zeros_like(z[:3])

    class PassGradient(eqx.Module):
        def __call__(self, z):  # (2 C, T): [scaled gradient, previous update]
            return z[:3]

    obs = Observations(jnp.zeros((T, 3)), jnp.ones((T, 3), bool))
    x0 = 2.0 * jax.random.normal(getkey(), (T, 3))

    def cost(x, o):
        return jnp.sum(x**4) + jnp.sum(jnp.where(o.mask, x - o.values, 0.0) ** 2)

    grad = jax.grad(lambda x: cost(x, obs))
    rms = lambda g: jnp.sqrt(jnp.mean(g**2))  # noqa: E731
    got = {}
    alpha = 1.7
    for arch, net, update in (
        ("f21", Zero(), lambda g: 5.0 * jnp.arctan(0.2 * alpha * g)),
        ("small", PassGradient(), jnp.arctan),
    ):
        for mode in ("each", "first"):
            solver = fdn.CNNSolver(
                (3,), key=getkey(), network=net, gradient_rms=mode, alpha=alpha,
                architecture=arch,
            )  # fmt: skip
            path = unroll(cost, solver, obs, x0, 4, return_path=True)[1]
            x, rho0, want = x0, rms(grad(x0)), [x0]
            for _ in range(4):
                g = grad(x)
                x = x - update(g / (rms(g) if mode == "each" else rho0))
                want.append(x)
            np.testing.assert_allclose(path, jnp.stack(want), rtol=1e-10, atol=1e-12)
            got[arch, mode] = path
        assert not np.allclose(got[arch, "each"][-1], got[arch, "first"][-1], atol=1e-3)
    # saved models record the options; files from before an option hold the solver
    # of that time (first-iteration RMS, the small CNN, GENN's coarse branch in the
    # state channels)
    from jaxda.fourdvarnet._describe import describe, rebuild

    model = fdn.FourDVarNet(
        fdn.VariationalCost(fdn.GENN((3,), key=getkey(), width=3, kernel_size=3)),
        fdn.CNNSolver((3,), key=getkey(), hidden=(4, 8)),
        n_iter=2,
    )
    hp = describe(model)
    back = rebuild(hp).solver
    assert (back.gradient_rms, back.architecture) == ("each", "f21")
    assert back.network.conv_b.weight.shape == (8, 4, 3)
    for key in ("gradient_rms", "architecture", "max_step"):
        del hp["solver"][key]
    hp["solver"]["hidden"] = 5
    del hp["prior"]["coarse_channels"]
    old = rebuild(hp)
    assert (old.solver.gradient_rms, old.solver.architecture) == ("first", "small")
    assert old.solver.alpha is None and old.solver.network.conv1.out_channels == 5
    assert old.cost.prior.coarse.conv_out.out_channels == 3
    assert old.cost.reduction == "sum"
    with pytest.raises(ValueError, match="gradient_rms"):
        fdn.CNNSolver((3,), key=getkey(), gradient_rms="last")
    with pytest.raises(ValueError, match="pair of widths"):
        fdn.CNNSolver((3,), key=getkey(), hidden=8)


def _conv_reference(x, w, periodic):
    """'Same' cross-correlation of `x` (C, *s) with `w` (O, C, *k) in NumPy float64,
    by explicit loops over the output positions."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    kernel, spatial = w.shape[2:], x.shape[1:]
    y = np.zeros((w.shape[0], *spatial))
    for pos in np.ndindex(*spatial):
        for off in np.ndindex(*kernel):
            src = [p + o - k // 2 for p, o, k in zip(pos, off, kernel)]
            src = [s % n if per else s for s, n, per in zip(src, spatial, periodic)]
            if all(0 <= s < n for s, n in zip(src, spatial)):
                y[(slice(None), *pos)] += (
                    w[(slice(None), slice(None), *off)] @ x[(slice(None), *src)]
                )
    return y


def test_conv_methods_match_dense_reference(getkey):
    # both implementations of Conv equal a loop-based float64 cross-correlation, with
    # zero or wrap-around padding, the centre tap zeroed, in 1-d and 2-d
    x1 = jax.random.normal(getkey(), (3, 9))
    x2 = jax.random.normal(getkey(), (2, 6, 5))
    for x, kernel, periodic in ((x1, 5, (False,)), (x2, (3, 5), (False, True))):
        conv = nn.Conv(x.shape[0], 4, kernel, key=getkey(), n_spatial=x.ndim - 1,
                       periodic=periodic, centre_zero=True, use_bias=True)  # fmt: skip
        want = _conv_reference(x, conv.effective_weight, periodic)
        want = want + np.asarray(conv.bias).reshape((-1,) + (1,) * (x.ndim - 1))
        for method in ("xla", "im2col"):
            got = nn.with_conv_method(conv, method)
            assert got.method == method and conv.method == "im2col"
            np.testing.assert_allclose(got(x), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="method"):
        nn.Conv(3, 3, 3, key=getkey(), method="fft")


def test_cnn_solver_is_the_authors_gradupdate1(getkey):
    # [F21] eq. 12 as the authors' model_GradUpdate1: 4,338 parameters for L63 (plus
    # alpha), 1,442 for the 2-d L96 field; one step equals a hand-written NumPy
    # evaluation; W3 starts at the identity, so a small alpha gives an update
    # u ~ g + W2 d; the update never exceeds 5 pi / 2.
    solver = fdn.CNNSolver((3,), key=getkey())
    net = solver.network
    sizes = [c.weight.shape for c in (net.conv_a, net.conv_b, net.conv_c)]
    assert sizes == [(24, 6, 3), (48, 24, 3), (3, 48, 3)]
    assert nn.count_parameters((net, solver.mix, solver.out)) == 4338
    assert nn.count_parameters(solver) == 4339  # alpha
    np.testing.assert_array_equal(solver.out.weight[:, :, 0], np.eye(3))
    field = eqx.filter_eval_shape(
        lambda: fdn.CNNSolver((40,), key=jax.random.key(0), layout="field")
    )
    assert nn.count_parameters(field) == 1442 + 1

    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    x = jax.random.normal(getkey(), (T, 3))
    grad = jax.random.normal(getkey(), (T, 3)) * 3.0
    prev = jax.random.normal(getkey(), (3, T))
    rho = float(np.sqrt(np.mean(np.asarray(grad) ** 2)))
    for alpha, prev in ((1.3, prev), (1e-4, jnp.zeros_like(prev))):
        s = eqx.tree_at(lambda m: m.alpha, solver, jnp.asarray(alpha))
        x_next, (u, r) = s.step(x, grad, (prev, jnp.asarray(1.0)), 10)
        g = alpha * np.asarray(grad).T / rho
        h = relu(_conv_reference(np.concatenate([prev, g]), net.conv_a.weight, [False]))
        h = relu(_conv_reference(h, net.conv_b.weight, [False]))
        d = _conv_reference(h, net.conv_c.weight, [False])
        g_new = g + np.asarray(s.mix.weight[:, :, 0]) @ d
        want = 5.0 * np.arctan(0.2 * g_new)
        np.testing.assert_allclose(u, want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(x_next, x - want.T, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(r, rho, rtol=1e-12)
        if alpha < 1e-3:  # atan(z) = z (1 + O(z^2)), d = O(alpha): u = g + W2 d
            np.testing.assert_allclose(u, g_new, rtol=1e-8)
    big = eqx.tree_at(lambda m: m.alpha, solver, jnp.asarray(1e6))
    _, (u, _) = big.step(x, grad, big.init(x, grad), 10)
    assert float(jnp.max(jnp.abs(u))) <= 5 * np.pi / 2


def test_convlstm_alpha_scales_the_gradient_input(getkey):
    # alpha enters as alpha * grad / rho: an LSTM with alpha = 3 equals one with
    # alpha = 1 whose input-gate weights are 3 times larger (the gates are linear in
    # their input); "first" keeps rho of the first iteration, "each" recomputes it.
    x = jax.random.normal(getkey(), (T, 3))
    g0, g1 = (jax.random.normal(getkey(), (T, 3)) for _ in range(2))
    g1 = 5.0 * g1
    for mode in ("each", "first"):
        a = fdn.ConvLSTMSolver((3,), key=getkey(), hidden=4, gradient_rms=mode)
        a3 = eqx.tree_at(lambda m: m.alpha, a, jnp.asarray(3.0))
        w = a.cell.gates.weight
        b = eqx.tree_at(lambda m: m.cell.gates.weight, a, w.at[:, :3].multiply(3.0))
        sa, sb = a3.init(x, g0), b.init(x, g0)
        for g in (g0, g1):
            xa, sa = a3.step(x, g, sa, 7)
            xb, sb = b.step(x, g, sb, 7)
            np.testing.assert_allclose(xa, xb, rtol=1e-12, atol=1e-12)
        rho0 = jnp.sqrt(jnp.mean(g0**2))
        want = jnp.sqrt(jnp.mean(g1**2)) if mode == "each" else rho0
        np.testing.assert_allclose(sa[2], want, rtol=1e-12)
    assert a.hyperparameters["gradient_rms"] == "first"
    assert nn.count_parameters(fdn.ConvLSTMSolver((3,), key=getkey())) == 3345 + 1


def test_genn_at_the_authors_sizes():
    # [F21]: L63 "30 channels, about 15,000 parameters" (the authors' 15,300), L96
    # "about 50,000" (their width 50, 11x11: 54,500 in this structure)
    def count(*a, **kw):
        return nn.count_parameters(
            eqx.filter_eval_shape(lambda: fdn.GENN(*a, key=jax.random.key(0), **kw))
        )

    assert count((3,), width=30, kernel_size=11, pool=4) == 15300
    assert (
        count((40,), layout="field", width=50, kernel_size=11, pool=4,
              periodic_space=True)
        == 54500
    )  # fmt: skip
    assert count((3,), width=30, kernel_size=11, coarse_channels=3) == 13356  # 0.2.0


def test_mean_reduction_cost(getkey):
    # reduction="mean": lam_o mean_Omega (x - y)^2 + lam_p mean (x - Phi(x))^2 equals
    # the sum form with weights lam_o / |Omega| and lam_p / |x|
    truth, obs = _windows(getkey(), 1)
    obs = Observations(obs.values[0], obs.mask[0])
    x = truth[0] + 0.1
    genn = fdn.GENN((3,), key=getkey(), width=3, kernel_size=3)
    mean = fdn.VariationalCost(genn, 0.3, 2.0, reduction="mean")
    n_obs, size = int(obs.mask.sum()), x.size
    total = fdn.VariationalCost(genn, 0.3 / n_obs, 2.0 / size)
    want = 0.3 * jnp.sum(jnp.where(obs.mask, x - obs.values, 0.0) ** 2) / n_obs
    want = want + 2.0 * jnp.mean((x - genn(x)) ** 2)
    np.testing.assert_allclose(mean(x, obs), want, rtol=1e-12)
    np.testing.assert_allclose(mean(x, obs), total(x, obs), rtol=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        fdn.VariationalCost(genn, reduction="max")


def test_constrained_conv_ignores_centre(getkey):
    conv = nn.Conv(3, 4, 5, key=getkey(), centre_zero=True)
    x = jax.random.normal(getkey(), (3, 12))
    y = conv(x)
    # output at t does not depend on x at t (any channel)
    jac = jax.jacobian(conv)(x)  # (4, 12, 3, 12)
    for t in range(12):
        assert jnp.all(jac[:, t, :, t] == 0)
    # the forward pass ignores whatever is stored at the centre
    poked = eqx.tree_at(lambda c: c.weight, conv, conv.weight.at[:, :, 2].set(7.0))
    np.testing.assert_array_equal(poked(x), y)
    # other taps do act
    assert jnp.any(jac[:, 5, :, 4] != 0)


def test_genn_periodic_equivariance_and_unet(getkey):
    g = fdn.GENN(
        (8,),
        key=getkey(),
        layout="field",
        width=3,
        kernel_size=3,
        pool=2,
        periodic_space=True,
    )
    x = jax.random.normal(getkey(), (T, 8))
    g = eqx.filter_jit(g)
    np.testing.assert_allclose(
        g(jnp.roll(x, 3, axis=1)), jnp.roll(g(x), 3, axis=1), rtol=1e-10, atol=1e-12
    )
    u = fdn.UNetPrior((8, 6), 4, key=getkey(), width=4, periodic=(True, True))
    z = jax.random.normal(getkey(), (4, 8, 6))
    u = eqx.filter_jit(u)
    assert u(z).shape == z.shape
    np.testing.assert_allclose(
        u(jnp.roll(z, 2, axis=1)), jnp.roll(u(z), 2, axis=1), rtol=1e-10, atol=1e-12
    )
    v = jax.random.normal(getkey(), z.shape)
    jvp = jax.jvp(u, (z,), (v,))[1]
    np.testing.assert_allclose(
        jvp, finite_difference_jvp(u, z, v), rtol=1e-5, atol=1e-7
    )
    with pytest.raises(ValueError, match="even"):
        fdn.UNetPrior((7, 6), 4, key=getkey())


def test_supervised_training_curriculum_and_centre_tap(getkey):
    truth, obs = _windows(getkey(), 16)
    # shapes shared with the other tests (compiled initialisations are reused)
    genn = fdn.GENN((3,), key=getkey(), width=3, kernel_size=3)
    solver = fdn.ConvLSTMSolver((3,), key=getkey(), hidden=6)
    model = fdn.FourDVarNet(fdn.VariationalCost(genn), solver, n_iter=2)
    data = fdn.make_training_data(obs, truth)
    traces = []

    def factory():
        base = fdn.make_fourdvarnet_loss("supervised", prior_weight=0.1)

        def loss(m, ex, key):
            traces.append(m.n_iter)
            return base(m, ex, key)

        return loss

    stages = [fdn.CurriculumStage(2, 25, 1e-2), fdn.CurriculumStage(3, 15, 3e-3)]
    res = fdn.fit_fourdvarnet(
        model,
        data,
        key=getkey(),
        batch_size=8,
        stages=stages,
        loss_factory=factory,
        progress=False,
    )
    assert traces == [2, 3]  # one trace (compilation) per stage
    assert res.model.n_iter == 3
    losses = res.losses
    assert losses.shape == (40,)
    assert losses[-10:].mean() < 0.7 * losses[:5].mean()
    for conv in res.model.cost.prior.constrained_convs:
        centre = conv.weight[:, :, conv.weight.shape[2] // 2]
        assert jnp.all(centre == 0.0)
    changed = res.model.cost.prior.fine.conv_in.weight != genn.fine.conv_in.weight
    assert jnp.any(changed)
    # vmap over windows equals window-by-window
    sol = fdn.assimilate_batch(res.model, obs)
    xb = sol.x
    assert sol.path is None and jnp.all(sol.result == RESULTS.successful)
    x3 = eqx.filter_jit(res.model)(Observations(obs.values[3], obs.mask[3]))
    np.testing.assert_allclose(xb[3], x3, rtol=1e-10, atol=1e-12)
    # chunks of 5 (16 = 3 x 5 + 1: a remainder chunk) inside one compiled loop
    solc = fdn.assimilate_batch(res.model, obs, chunk_size=5, return_path=True)
    xc, pc = solc.x, solc.path
    np.testing.assert_allclose(xc, xb, rtol=1e-10, atol=1e-12)
    assert pc.shape == (16, res.model.n_iter + 1, *obs.values.shape[1:])
    np.testing.assert_allclose(pc[:, -1], xb, rtol=1e-10, atol=1e-12)


def test_unsupervised_training_frozen_prior(getkey):
    truth, obs = _windows(getkey(), 16)
    from jaxda.data import Normalisation

    norm = Normalisation(jnp.array([0.0, 0.0, 25.0]), jnp.full(3, 8.0))
    prior = fdn.ODEPrior.from_model(Lorenz63(), 0.01, normalisation=norm)
    model = fdn.FourDVarNet(
        fdn.VariationalCost(prior, 1.0, 10.0),
        fdn.CNNSolver((3,), key=getkey(), hidden=(4, 8)),
        n_iter=3,
        train_prior=False,
    )
    data = fdn.make_training_data(obs)
    res = fdn.fit_fourdvarnet(
        model,
        data,
        key=getkey(),
        batch_size=8,
        mode="unsupervised",
        stages=[fdn.CurriculumStage(3, 40, 1e-2)],
        progress=False,
    )
    losses = res.losses
    assert losses[-10:].mean() < 0.2 * losses[:5].mean()
    m = res.model
    assert float(m.cost.prior.flow.model.sigma) == 10.0  # frozen prior
    # ... in the supervised loss's prior term too
    g = eqx.filter_grad(
        lambda m: fdn.supervised_loss(
            m, Observations(obs.values[0], obs.mask[0]), truth[0], prior_weight=0.5
        )
    )(model)
    assert float(g.cost.prior.flow.model.sigma) == 0.0
    assert float(jnp.abs(g.cost.raw_lam_prior)) > 0
    np.testing.assert_array_equal(m.cost.raw_lam_obs, model.cost.raw_lam_obs)
    np.testing.assert_array_equal(m.cost.raw_lam_prior, model.cost.raw_lam_prior)


def test_semisupervised_loss_hides_heldout(getkey):
    truth, obs = _windows(getkey(), 1, every=2)
    obs = Observations(obs.values[0], obs.mask[0])
    model = fdn.FourDVarNet(
        fdn.VariationalCost(fdn.GENN((3,), key=getkey(), width=3, kernel_size=3)),
        fdn.TrainableStepGradient(0.05),
        n_iter=2,
    )
    key = getkey()
    held = obs.mask & (jax.random.uniform(key, obs.mask.shape) < 0.5)
    assert held.any()
    loss = fdn.semisupervised_loss(model, obs, key, holdout=0.5)
    # changing held-out values changes only the target, never the reconstruction
    x_in = model(Observations(jnp.where(held, 0.0, obs.values), obs.mask & ~held))
    want = jnp.sum(jnp.where(held, (x_in - obs.values) ** 2, 0.0)) / held.sum()
    np.testing.assert_allclose(loss, want, rtol=1e-10)


def test_flax_adapter(getkey):
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 3, rngs=rngs)

        def __call__(self, x):
            return jnp.tanh(self.lin(x))

    net = Net(nnx.Rngs(0))
    prior = nn.FlaxModule(net)
    x = jax.random.normal(getkey(), (T, 3))
    np.testing.assert_allclose(prior(x), net(x), rtol=1e-6)
    solver_net = nn.FlaxModule(nnx.Conv(6, 3, kernel_size=(3,), rngs=nnx.Rngs(1)))

    class _ChannelsLast(eqx.Module):  # nnx.Conv is channels-last
        f: nn.FlaxModule

        def __call__(self, z):
            return self.f(z.T).T

    truth, obs = _windows(getkey(), 1)
    obs = Observations(obs.values[0], obs.mask[0])
    model = fdn.FourDVarNet(
        fdn.VariationalCost(prior),
        fdn.CNNSolver((3,), key=getkey(), network=_ChannelsLast(solver_net)),
        n_iter=2,
    )
    model = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model
    )
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p):
        return fdn.supervised_loss(eqx.combine(p, static), obs, truth[0])

    g = eqx.filter_jit(jax.grad(loss))(params)
    v = jax.tree_util.tree_map(lambda a: jnp.ones_like(a) / a.size, params)
    jvp = sum(
        jnp.vdot(a, b)
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(v))
    )
    eps = 1e-6
    plus = jax.tree_util.tree_map(lambda a, b: a + eps * b, params, v)
    minus = jax.tree_util.tree_map(lambda a, b: a - eps * b, params, v)
    fd = (loss(plus) - loss(minus)) / (2 * eps)
    np.testing.assert_allclose(jvp, fd, rtol=1e-5)
    flax_grad = g.solver.network.f.state
    assert any(jnp.any(a != 0) for a in jax.tree_util.tree_leaves(flax_grad))


def test_bad_input(getkey):
    truth, obs = _windows(getkey(), 2)
    one = Observations(obs.values[0], obs.mask[0])
    genn = fdn.GENN((3,), key=getkey(), width=3, kernel_size=3)
    model = fdn.FourDVarNet(
        fdn.VariationalCost(genn), fdn.TrainableStepGradient(0.1), n_iter=2
    )
    with pytest.raises(ValueError, match="n_iter"):
        fdn.FourDVarNet(
            fdn.VariationalCost(genn), fdn.TrainableStepGradient(0.1), n_iter=0
        )
    with pytest.raises(ValueError, match="n_iter"):
        model.with_iterations(0)
    with pytest.raises(ValueError, match="x_init"):
        model(one, jnp.zeros((T + 1, 3)))
    with pytest.raises(ValueError, match=r"shape \(T, 3\)"):
        model(Observations(jnp.zeros((T, 4)), jnp.ones((T, 4), bool)))
    with pytest.raises(ValueError, match="no observation"):
        model(Observations(jnp.zeros((T, 3)), jnp.zeros((T, 3), bool)))
    with pytest.raises(ValueError, match=r"windows \[1\]"):
        fdn.assimilate_batch(model, Observations(obs.values, obs.mask.at[1].set(False)))
    with pytest.raises(ValueError, match="chunk_size"):
        fdn.assimilate_batch(model, obs, chunk_size=0)
    lstm = fdn.ConvLSTMSolver((4,), key=getkey())
    with pytest.raises(ValueError, match="built for states of shape"):
        fdn.FourDVarNet(fdn.VariationalCost(genn), lstm, n_iter=2)(one)
    with pytest.raises(ValueError, match="layout"):
        fdn.GENN((8, 8), key=getkey())
    with pytest.raises(ValueError, match="odd"):
        nn.Conv(3, 3, 4, key=getkey())
    with pytest.raises(ValueError, match="mode"):
        fdn.make_fourdvarnet_loss("semi")
    with pytest.raises(ValueError, match="truth"):
        fdn.fit_fourdvarnet(
            model,
            fdn.make_training_data(obs),
            key=getkey(),
            batch_size=2,
            stages=[fdn.CurriculumStage(2, 1)],
            progress=False,
        )
    with pytest.raises(ValueError, match="truth"):
        fdn.make_training_data(obs, truth[:, :-1])
    with pytest.raises(ValueError, match="step_size"):
        fdn.TrainableStepGradient(0.0)


_V020_MODEL = (
    pathlib.Path(__file__).parents[1]
    / "benchmarks/results/fourdvarnet/l63-table/model_l63_supervised-genn-cnn.eqx"
)


def test_save_load_round_trip(tmp_path, getkey):
    from jaxda.data import Normalisation

    truth, obs = _windows(getkey(), 2)
    one = Observations(obs.values[0], obs.mask[0])
    norm = Normalisation(jnp.array([0.0, 0.0, 25.0]), jnp.full(3, 8.0))
    f32 = lambda m: jax.tree_util.tree_map(  # noqa: E731
        lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, m
    )

    def random_weights(build):  # `build()`'s structure, nothing compiled to make it
        rng = np.random.default_rng(0)

        def fill(a):
            if not isinstance(a, jax.ShapeDtypeStruct):
                return a
            return jnp.asarray(rng.uniform(0.05, 0.3, a.shape).astype(a.dtype))

        return jax.tree_util.tree_map(fill, eqx.filter_eval_shape(build))

    k0 = jax.random.key(0)  # the weights are random_weights's
    models = {
        "genn-cnn": random_weights(
            lambda: fdn.FourDVarNet(
                fdn.VariationalCost(
                    fdn.GENN((3,), key=k0, width=3, kernel_size=3), 0.3, 2.0
                ),
                fdn.CNNSolver((3,), key=k0, hidden=(4, 8)),
                n_iter=3,
                fill=0.5,
            )
        ),
        "ode-lstm-f32": random_weights(
            lambda: f32(
                fdn.FourDVarNet(
                    fdn.VariationalCost(
                        fdn.ODEPrior.from_model(
                            Lorenz63(rho=27.0), 0.01, normalisation=norm, substeps=2
                        )
                    ),
                    fdn.ConvLSTMSolver((3,), key=k0, hidden=6),
                    n_iter=2,
                    train_prior=False,
                )
            )
        ),
        "unet-fsgd": random_weights(
            lambda: fdn.FourDVarNet(
                fdn.VariationalCost(
                    fdn.UNetPrior((8, 6), 4, key=k0, width=4, periodic=(True, True))
                ),
                fdn.TrainableStepGradient(jnp.asarray(0.05)),
                n_iter=2,
                checkpoint=True,
            )
        ),
    }
    run = eqx.filter_jit(lambda m, o: m(o))  # one compilation per architecture
    for name, model in models.items():
        path = tmp_path / f"{name}.eqx"
        jio.save_model(path, model)
        loaded = jio.load_model(path, like=model)
        assert bool(eqx.tree_equal(loaded, model)), name
        dtypes = [jnp.result_type(a) for a in jax.tree_util.tree_leaves(loaded)]
        assert dtypes == [jnp.result_type(a) for a in jax.tree_util.tree_leaves(model)]
        if name == "unet-fsgd":
            o = Observations(
                jax.random.normal(getkey(), (4, 8, 6)), jnp.ones((4, 8, 6), bool)
            )
        else:
            o = one
        np.testing.assert_array_equal(run(loaded, o), run(model, o))
    # the loaded architecture (not just the weights) is the saved one
    loaded = jio.load_model(tmp_path / "ode-lstm-f32.eqx")
    assert loaded.cost.prior.flow.substeps == 2 and not loaded.train_prior
    assert loaded.cost.prior.flow.model.rho.dtype == jnp.float32
    # a model saved by jaxda 0.2.0 (its small CNN solver, the GENN coarse branch in the
    # state channels, the sum-form cost) loads with that architecture and runs
    old = jio.load_model(_V020_MODEL)
    assert (old.solver.architecture, old.solver.alpha) == ("small", None)
    assert old.solver.network.conv1.out_channels == 30
    assert old.cost.prior.coarse.conv_out.out_channels == 3
    assert old.cost.reduction == "sum" and old.n_iter == 20
    assert old.cost.prior.fine.conv_in.weight.dtype == jnp.float32
    assert jnp.all(jnp.isfinite(run(old, one)))
    # another architecture, a training checkpoint, a corrupt file, a custom module
    with pytest.raises(ValueError, match="another architecture"):
        jio.load_model(tmp_path / "genn-cnn.eqx", like=models["unet-fsgd"])
    jio.save_checkpoint(tmp_path / "state", models["genn-cnn"], {"stage": 0})
    with pytest.raises(ValueError, match="does not hold a model saved by"):
        jio.load_model(tmp_path / "state")
    raw = (tmp_path / "genn-cnn.eqx").read_bytes()
    (tmp_path / "cut").write_bytes(raw[: len(raw) - 7])
    with pytest.raises(ValueError, match="corrupt, truncated"):
        jio.load_model(tmp_path / "cut")
    header = jio.read_checkpoint_header(tmp_path / "genn-cnn.eqx")
    header["hyperparameters"]["prior"]["width"] = 4  # weights no longer fit
    jio.save_checkpoint(tmp_path / "lie", models["genn-cnn"], header)
    with pytest.raises(ValueError, match="invalid architecture"):
        jio.load_model(tmp_path / "lie")
    nnx = pytest.importorskip("flax.nnx")
    flax_prior = nn.FlaxModule(nnx.Linear(3, 3, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match="cannot describe the prior of type FlaxModule"):
        jio.save_model(
            tmp_path / "x",
            fdn.FourDVarNet(
                fdn.VariationalCost(flax_prior), fdn.TrainableStepGradient(0.1)
            ),
        )


def test_assimilate_result_codes_and_value_checks(getkey, monkeypatch):
    # Regression (probe defect 10): NaN inputs and a diverging unroll were silent.
    import jaxda.fourdvarnet._model as fdn_model

    truth, obs = _windows(getkey(), 3)
    one = Observations(obs.values[0], obs.mask[0])
    genn = fdn.GENN((3,), key=getkey(), width=3, kernel_size=3)
    model = fdn.FourDVarNet(
        fdn.VariationalCost(genn), fdn.TrainableStepGradient(0.1), n_iter=2
    )
    sol = fdn.assimilate(model, one, return_path=True)
    assert sol.result == RESULTS.successful
    x, path = eqx.filter_jit(lambda m, o: m(o, return_path=True))(model, one)
    np.testing.assert_allclose(sol.x, x, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sol.path, path, rtol=1e-12, atol=1e-14)
    # eagerly, non-finite values are a ValueError naming the argument
    with pytest.raises(ValueError, match="`x_init` must be finite"):
        fdn.assimilate(model, one, jnp.full((T, 3), jnp.nan))
    with pytest.raises(ValueError, match="`x_init` must be finite"):
        fdn.assimilate_batch(model, obs, jnp.full(obs.values.shape, jnp.inf))
    # a finite but huge first guess overflows the cost: `nonfinite`, raised by default
    big = jnp.full((T, 3), 1e200)
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite"):
        fdn.assimilate(model, one, big)
    assert fdn.assimilate(model, one, big, throw=False).result == RESULTS.nonfinite
    # under jit the value checks become `invalid_input`, window by window
    x0 = jnp.zeros(obs.values.shape).at[1, 0, 0].set(jnp.nan)
    res = jax.jit(lambda o, x: fdn.assimilate_batch(model, o, x, throw=False).result)(
        obs, x0
    )
    assert (res == RESULTS.invalid_input).tolist() == [False, True, False]
    assert (res == RESULTS.successful).tolist() == [True, False, True]
    with pytest.raises(eqx.EquinoxRuntimeError, match="value check"):
        eqx.filter_jit(lambda o, x: fdn.assimilate_batch(model, o, x).x)(obs, x0)
    # regression (probe defect 17): the prior's output shape is traced once per
    # window shape, not at every call
    traced = []
    real = fdn_model._prior_out_shape
    monkeypatch.setattr(
        fdn_model, "_prior_out_shape", lambda *a: traced.append(a[1]) or real(*a)
    )
    fdn_model._PRIOR_SHAPES.clear()
    for _ in range(3):
        fdn.assimilate_batch(model, obs)
        fdn.assimilate(model, one)
    short = Observations(obs.values[:, :8], obs.mask[:, :8])
    fdn.assimilate_batch(model, short)
    assert traced == [(T, 3), (8, 3)]


def test_fit_fourdvarnet_stops_at_a_nonfinite_loss(getkey):
    # Regression (probe defect 1, curriculum side): a stage whose loss is NaN stops
    # the curriculum and says so in `result`; the model keeps its finite weights.
    truth, obs = _windows(getkey(), 4)
    genn = fdn.GENN((3,), key=getkey(), width=3, kernel_size=3)
    model = fdn.FourDVarNet(
        fdn.VariationalCost(genn), fdn.TrainableStepGradient(0.1), n_iter=2
    )

    def factory():
        base = fdn.make_fourdvarnet_loss("supervised")
        return lambda m, e, k: jnp.nan * base(m, e, k)

    with pytest.warns(RuntimeWarning, match="non-finite"):
        res = fdn.fit_fourdvarnet(
            model,
            fdn.make_training_data(obs, truth),
            key=getkey(),
            batch_size=2,
            stages=[fdn.CurriculumStage(2, 3), fdn.CurriculumStage(3, 3)],
            loss_factory=factory,
            progress=False,
        )
    assert res.result == RESULTS.nonfinite_loss and len(res.stages) == 1
    assert int(res.stages[0].state.step) == 0
    assert bool(eqx.tree_equal(res.model, model))
