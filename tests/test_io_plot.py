"""Atomic writing (`jaxda.io`) and figures (`jaxda.plot`)."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxda import io, plot
from jaxda.obs import Observations


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "sub" / "result.txt"
    with io.atomic_path(path) as tmp:
        assert os.path.dirname(tmp) == str(path.parent) and not path.exists()
        with open(tmp, "w") as f:
            f.write("first")
    assert path.read_text() == "first"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError, match="interrupted"):
        with io.atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.txt"]


def test_save_json_converts_array_scalars(tmp_path):
    obj = {"a": np.float32(1.5), "b": jnp.arange(3), "c": np.int64(2), "d": tmp_path}
    io.save_json(tmp_path / "r.json", obj)
    text = (tmp_path / "r.json").read_text()
    assert text.endswith("\n")
    loaded = json.loads(text)
    assert loaded == {"a": 1.5, "b": [0, 1, 2], "c": 2, "d": str(tmp_path)}
    assert isinstance(loaded["c"], int)


def test_figures_are_built_and_saved(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(4, 10, 3))
    mask = rng.uniform(size=truth.shape) < 0.2
    obs = Observations(truth + 0.1, mask)
    fig = plot.trajectories(
        truth, obs, {"4DVar": truth + 0.2, "other": truth}, n_windows=2
    )
    assert len(fig.axes) == 3 * 2
    assert [line.get_label() for line in fig.axes[0].lines][:3] == [
        "truth", "4DVar", "other",
    ]  # fmt: skip
    path = plot.save_figure(fig, tmp_path / "traj.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = {"GN": ([0, 1, 2], [3.0, 1.0, 0.5], [2.0, 1.0, 0.9])}
    fig = plot.energy_pathways(curves, title="t")
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(fig.axes[1].lines[0].get_ydata(), [2.0, 1.0, 0.9])
    many = {f"s{i}": ([0, 1], [1.0, 0.5], [1.0, 0.5]) for i in range(12)}
    lines = plot.energy_pathways(many).axes[1].lines
    assert len({(ln.get_color(), ln.get_linestyle()) for ln in lines}) == 12
    plot.save_figure(fig, tmp_path / "path.pdf")
    assert (tmp_path / "path.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="must have the shape of `truth`"):
        plot.trajectories(truth, Observations(truth[:2], mask[:2]), {})


def test_save_json_writes_strict_json(tmp_path):
    # Regression (probe defect 16): NaN / Infinity were written, which strict JSON
    # parsers reject; they are written as null.
    obj = {
        "nan": float("nan"),
        "inf": np.float32(np.inf),
        "arr": np.array([1.0, -np.inf]),
    }
    io.save_json(tmp_path / "r.json", obj)

    def refuse(token):
        raise ValueError(token)

    text = (tmp_path / "r.json").read_text()
    loaded = json.loads(text, parse_constant=refuse)
    assert loaded == {"nan": None, "inf": None, "arr": [1.0, None]}


def test_killed_save_leaves_no_orphan_after_the_next_save(tmp_path):
    # Regression (probe defect 16): each killed save left a `.name.*.tmp` for good.
    import subprocess
    import sys

    path = tmp_path / "out.bin"
    code = (
        "import os, sys\n"
        "from jaxda.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    open(tmp, 'wb').write(b'half')\n"
        "    os._exit(9)\n"
    )
    seen = []
    for _ in range(3):  # each save removes the orphan of the killed one before it
        proc = subprocess.run([sys.executable, "-c", code, str(path)], timeout=120)
        assert proc.returncode == 9
        orphans = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(orphans) == 1 and not path.exists()
        seen += orphans
    assert len(set(seen)) == 3
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    assert path.read_bytes() == b"whole"


def test_motion_maps_show_speed_arrows_and_endpoint_errors(tmp_path):
    pytest.importorskip("matplotlib")
    from jaxda.grid import Grid

    grid = Grid(12, 16, 2.0, 1.0, "closed")
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(2, 12, 16))
    estimate = truth + np.stack([np.full((12, 16), 0.3), np.full((12, 16), 0.4)])
    fig = plot.plot_motion(truth, {"4DVar": estimate, "exact": truth}, grid, arrows=4)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    # truth, two estimates, two end-point-error maps
    assert len(images) == 5
    np.testing.assert_allclose(images[0].get_array(), np.hypot(*truth))
    np.testing.assert_allclose(images[3].get_array(), 0.5)  # |(0.3, 0.4)|
    np.testing.assert_allclose(images[4].get_array(), 0.0)
    quiver = fig.axes[0].collections[0]
    assert quiver.N == 3 * 4  # 16 // 4 = 4 columns, 12 // 4 = 3 rows of arrows
    plot.save_figure(fig, tmp_path / "motion.png")
    with pytest.raises(ValueError, match=r"`estimates\['bad'\]` must be a velocity"):
        plot.plot_motion(truth, {"bad": truth[0]}, grid)
    with pytest.raises(ValueError, match="`arrows` must be an int"):
        plot.plot_motion(truth, estimate, grid, arrows=0)
