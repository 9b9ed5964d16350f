"""The architecture of a `FourDVarNet` as JSON, for `jaxda.io.save_model` /
`load_model`.

`describe(model)` returns the hyperparameters that rebuild the model's structure: the
configuration of the unrolled network (`n_iter`, `fill`, ...), the prior (`GENN`,
`UNetPrior` or `ODEPrior` of a `jaxda.models` system and flow map) and the solver
(`TrainableStepGradient`, `ConvLSTMSolver`, `CNNSolver` with its default network).
`rebuild(hp)` builds a model of that structure (arbitrary weights; the loader then
replaces every leaf with the saved one). Custom modules (e.g. a `FlaxModule` prior)
cannot be described: saving them raises a `TypeError`.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import models as _models
from .._validation import is_concrete
from ..data import Normalisation
from ..models import RK4, AbstractDynamics, DiffraxStep, Euler, flow_map
from ._model import FourDVarNet, VariationalCost
from ._priors import GENN, ODEPrior, UNetPrior
from ._solvers import CNNSolver, ConvLSTMSolver, TrainableStepGradient


_DIFFRAX = {
    "Tsit5": "tsit5",
    "Dopri5": "dopri5",
    "Heun": "heun",
    "Midpoint": "midpoint",
}
_SMALL = 64  # arrays up to this size keep their values in the header (valid skeleton)


def _cannot(what: str, obj) -> TypeError:
    return TypeError(
        f"save_model cannot describe the {what} of type {type(obj).__name__} (it "
        "knows GENN, UNetPrior, ODEPrior of a jaxda.models system; "
        "TrainableStepGradient, ConvLSTMSolver, CNNSolver with its default "
        "network). Save such a model with jaxda.io.save_checkpoint and rebuild "
        "its structure yourself to load it."
    )


def _encode(name: str, value, owner):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (jax.Array, np.ndarray)) and is_concrete(value):
        a = np.asarray(value)
        out = {"array": list(a.shape), "dtype": str(a.dtype)}
        if a.size <= _SMALL:
            out["value"] = a.tolist()
        return out
    raise _cannot(f"field `{name}`", owner) from None


def _decode(value):
    if isinstance(value, dict) and "array" in value:
        shape, dtype = tuple(value["array"]), jnp.dtype(value["dtype"])
        if "value" in value:
            return jnp.asarray(np.asarray(value["value"], dtype).reshape(shape))
        return jnp.ones(shape, dtype)
    return value


def _describe_dynamics(model: AbstractDynamics) -> dict:
    name = type(model).__name__
    if getattr(_models, name, None) is not type(model):
        raise _cannot("dynamical system", model)
    fields = {
        f.name: _encode(f.name, getattr(model, f.name), model)
        for f in dataclasses.fields(model)
    }
    return {"class": name, "fields": fields}


def _describe_prior(prior) -> dict:
    if isinstance(prior, (GENN, UNetPrior)):
        return {"class": type(prior).__name__, **prior.hyperparameters}
    if isinstance(prior, ODEPrior):
        flow = prior.flow
        if type(flow) is RK4:
            method = "rk4"
        elif type(flow) is Euler:
            method = "euler"
        elif type(flow) is DiffraxStep and type(flow.solver).__name__ in _DIFFRAX:
            method = _DIFFRAX[type(flow.solver).__name__]
        else:
            raise _cannot("flow map", flow)
        norm = prior.normalisation
        return {
            "class": "ODEPrior",
            "method": method,
            "dt": _encode("dt", flow.dt, flow),
            "substeps": flow.substeps,
            "model": _describe_dynamics(flow.model),
            "normalisation": None if norm is None else list(np.shape(norm.mean)),
        }
    raise _cannot("prior", prior)


def _describe_solver(solver) -> dict:
    if isinstance(solver, TrainableStepGradient):
        step = _encode("step_size", solver.step_size, solver)
        return {"class": "TrainableStepGradient", "step_size": step}
    if isinstance(solver, ConvLSTMSolver):
        return {"class": "ConvLSTMSolver", **solver.hyperparameters}
    if isinstance(solver, CNNSolver) and solver.hyperparameters is not None:
        return {"class": "CNNSolver", **solver.hyperparameters}
    raise _cannot("solver", solver)


def describe(model: FourDVarNet) -> dict:
    """JSON-serialisable hyperparameters of a `FourDVarNet` (see `rebuild`)."""
    return {
        "n_iter": model.n_iter,
        "fill": float(model.fill),
        "checkpoint": bool(model.checkpoint),
        "train_prior": bool(model.train_prior),
        "train_weights": bool(model.train_weights),
        "reduction": model.cost.reduction,
        "prior": _describe_prior(model.cost.prior),
        "solver": _describe_solver(model.solver),
    }


def _rebuild_prior(hp: dict, key):
    hp = dict(hp)
    cls = hp.pop("class")
    if cls == "GENN":
        hp["state_shape"] = tuple(hp["state_shape"])
        if "coarse_channels" not in hp:  # files of jaxda 0.2.0
            field = hp.get("layout", "channels") == "field"
            hp["coarse_channels"] = 1 if field else hp["state_shape"][0]
        return GENN(key=key, **hp)
    if cls == "UNetPrior":
        hp["state_shape"] = tuple(hp["state_shape"])
        hp["periodic"] = tuple(hp["periodic"])
        return UNetPrior(key=key, **hp)
    if cls == "ODEPrior":
        dyn = hp["model"]
        dyn_cls = getattr(_models, dyn["class"], None)
        if not (isinstance(dyn_cls, type) and issubclass(dyn_cls, AbstractDynamics)):
            raise ValueError(f"unknown dynamical system {dyn['class']!r}")
        fields = {k: _decode(v) for k, v in dyn["fields"].items()}
        dt = _decode(hp["dt"])
        flow = flow_map(dyn_cls(**fields), dt, hp["method"], hp["substeps"])
        norm = hp["normalisation"]
        if norm is not None:
            norm = Normalisation(jnp.zeros(tuple(norm)), jnp.ones(tuple(norm)))
        return ODEPrior(flow, norm)
    raise ValueError(f"unknown prior class {cls!r}")


def _rebuild_solver(hp: dict, key):
    hp = dict(hp)
    cls = hp.pop("class")
    if cls in ("TrainableStepGradient", "FixedStepGradient"):  # old name in files
        return TrainableStepGradient(_decode(hp["step_size"]))
    # files written before an option existed hold the solver of that time: the
    # first-iteration gradient RMS, no alpha, the small CNN of jaxda 0.2.0
    hp.setdefault("gradient_rms", "first")
    if cls == "CNNSolver":
        hp.setdefault("architecture", "small")
        if isinstance(hp.get("hidden"), list):
            hp["hidden"] = tuple(hp["hidden"])
    if cls == "ConvLSTMSolver":
        hp.setdefault("alpha", None)
    if cls in ("ConvLSTMSolver", "CNNSolver"):
        hp["state_shape"] = tuple(hp["state_shape"])
        hp["kernel_size"] = tuple(hp["kernel_size"])
        return {"ConvLSTMSolver": ConvLSTMSolver, "CNNSolver": CNNSolver}[cls](
            key=key, **hp
        )
    raise ValueError(f"unknown solver class {cls!r}")


def rebuild(hp: dict) -> FourDVarNet:
    """A `FourDVarNet` with the structure described by `hp` (`describe`); its weights
    are arbitrary. Raises `KeyError` / `TypeError` / `ValueError` on a bad `hp`."""
    k1, k2 = jax.random.split(jax.random.key(0))
    prior = _rebuild_prior(hp["prior"], k1)
    solver = _rebuild_solver(hp["solver"], k2)
    return FourDVarNet(
        VariationalCost(prior, reduction=hp.get("reduction", "sum")),
        solver,
        n_iter=hp["n_iter"],
        fill=hp["fill"],
        checkpoint=hp["checkpoint"],
        train_prior=hp["train_prior"],
        train_weights=hp["train_weights"],
    )


def _skeleton(hp: dict, signature: list) -> FourDVarNet:
    """The structure of `rebuild(hp)` built abstractly (`eqx.filter_eval_shape`:
    nothing is computed or allocated); `jaxda.io.load_model` compares its leaves with
    `signature` and sets the stored dtypes."""
    if not isinstance(hp, dict):
        raise TypeError(f"hyperparameters must be a dict; got {type(hp).__name__}")
    return eqx.filter_eval_shape(lambda: rebuild(hp))


def register() -> None:
    from ..io._model import register_model

    register_model(FourDVarNet, describe=describe, skeleton=_skeleton)
