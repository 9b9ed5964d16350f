"""The model file format (`jaxda.io.save_model` / `load_model`): headers are checked
against the stored leaves before anything is built."""

import hashlib
import json
import tracemalloc

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import jaxda.fourdvarnet as fdn
import jaxda.incremental as inc
from jaxda import io as jio
from jaxda.io._checkpoint import _digest
from jaxda.models import Lorenz63


def _split(path):
    line, _, payload = path.read_bytes().partition(b"\n")
    return json.loads(line), payload


def _write(path, meta, payload, *, rehash=True):
    meta = dict(meta)
    if rehash:  # what a forger would do: the checksum is no defence on its own
        meta["sha256"] = _digest(meta, payload)
    path.write_bytes(json.dumps(meta, sort_keys=True).encode() + b"\n" + payload)


def _band_model():
    return inc.NeuralBandGaussian(6, 2, key=jax.random.key(0), width=4, depth=1)


def test_edited_hyperparameters_are_refused_before_allocating(tmp_path):
    # Regression (probe defect 3): `"depth": 1e9` in a 6 KB file took 16 GB.
    path = tmp_path / "m.eqx"
    jio.save_model(path, _band_model())
    meta, payload = _split(path)
    for key, value, match in [
        ("depth", 10**9, "stored arrays"),
        ("width", 10**7, "stored architecture builds"),
        ("depth", "1", "non-negative int"),
        ("dtype", "int32", "floating dtype"),
    ]:
        bad = json.loads(json.dumps(meta))
        bad["header"]["hyperparameters"][key] = value
        _write(tmp_path / "bad", bad, payload)
        tracemalloc.start()
        with pytest.raises(ValueError, match=match):
            jio.load_model(tmp_path / "bad")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 50e6, (key, peak)
    # leaves claiming more data than the payload holds
    bad = json.loads(json.dumps(meta))
    bad["header"]["leaves"][0][0] = [10**6, 10**6]
    _write(tmp_path / "bad", bad, payload)
    with pytest.raises(ValueError, match="more data than the file holds"):
        jio.load_model(tmp_path / "bad")


def test_edited_header_fails_the_checksum_and_leaf_check(tmp_path):
    # Regression (probe defect 5): `rho -> null` loaded with every later scalar
    # shifted (beta = 28, dt = 2.667).
    prior = fdn.ODEPrior.from_model(Lorenz63(), 0.01)
    model = fdn.FourDVarNet(
        fdn.VariationalCost(prior), fdn.TrainableStepGradient(0.1), n_iter=2
    )
    path = tmp_path / "m.eqx"
    jio.save_model(path, model)
    loaded = jio.load_model(path)
    assert bool(eqx.tree_equal(loaded, model))
    assert float(loaded.cost.prior.flow.model.beta) == pytest.approx(8.0 / 3.0)
    meta, payload = _split(path)
    fields = meta["header"]["hyperparameters"]["prior"]["model"]["fields"]
    assert "rho" in fields
    fields["rho"] = None
    _write(tmp_path / "edited", meta, payload, rehash=False)
    with pytest.raises(ValueError, match="corrupt, truncated or edited"):
        jio.load_model(tmp_path / "edited")
    _write(tmp_path / "forged", meta, payload)  # checksum recomputed
    with pytest.raises(ValueError, match="invalid architecture"):
        jio.load_model(tmp_path / "forged")


def test_version_1_files_still_load(tmp_path):
    # jaxda 0.2 wrote the checksum over the payload only and no leaf list.
    model = _band_model()
    path = tmp_path / "m.eqx"
    jio.save_model(path, model)
    meta, payload = _split(path)
    meta["version"] = 1
    meta["header"]["class"] = "NeuralBandPrior"
    del meta["header"]["leaves"]
    meta["sha256"] = hashlib.sha256(payload).hexdigest()
    _write(tmp_path / "v1", meta, payload, rehash=False)
    loaded = jio.load_model(tmp_path / "v1")
    assert bool(eqx.tree_equal(loaded, model))
    z = jnp.ones((6, 2))
    assert bool(jnp.all(loaded.mean(z, 0.5) == model.mean(z, 0.5)))
