"""Documentation: `mkdocs build --strict` passes and every page's code runs.

The ```python blocks of a page form one script (executed in a subprocess, so that its
`jax.config` changes stay out of this process). Running the pages is marked slow
(30 s to a few minutes each on a 2-core CPU): `pytest -m slow tests/test_docs.py`.
The build test is skipped when mkdocs (the `docs` extra) is not installed.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest


ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)

FAST_PAGES = [
    "index.md",
    "scaling.md",
    "tutorials/var_lorenz63.md",
    "api/motion.md",
    "api/spde.md",
]
SLOW_PAGES = [
    "api/fourdvarnet.md",
    "tutorials/gaussian_map.md",
    "tutorials/neural_incremental.md",
    "tutorials/fourdvarnet_lorenz96.md",
    "tutorials/cycled_lorenz96.md",
]


def page_script(page: str) -> str:
    text = (DOCS / page).read_text()
    return "\n".join(BLOCK.findall(text))


def run_script(code: str, timeout: int, env_extra: dict | None = None):
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_every_page_with_code_is_tested():
    pages = {
        str(p.relative_to(DOCS))
        for p in DOCS.rglob("*.md")
        if BLOCK.search(p.read_text())
    }
    assert pages <= set(FAST_PAGES + SLOW_PAGES), pages


@pytest.mark.timeout(300)
def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in ["index.html", "concepts/index.html", "api/var-solvers/index.html"]:
        assert (tmp_path / page).exists(), page
    api = (tmp_path / "api" / "var-solvers" / "index.html").read_text()
    assert 'id="jaxda.var.GaussNewton"' in api


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("page", FAST_PAGES)
def test_page_code_runs(page):
    code = page_script(page)
    assert code.strip(), f"{page} has no python block"
    env = {}
    if page == "scaling.md":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    proc = run_script(code, 280, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", SLOW_PAGES)
def test_tutorial_code_runs(page):
    proc = run_script(page_script(page), 880)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_benchmark_plots(tmp_path):
    pytest.importorskip("matplotlib")
    import json

    recs = [
        {
            "problem": p,
            "method": m,
            "device": "cpu",
            "batch": b,
            "n_devices": 1,
            "time_per_window_s": t,
            "mse": e,
        }
        for p in ("F21-L63", "B24-L63")
        for m, t, e in (("gn", 1e-3, 0.2), ("4dvarnet", 1e-4, 0.5))
        for b in (1, 64)
    ]
    recs += [
        {
            "problem": "band-b6",
            "method": "solve",
            "device": "cpu",
            "d": d,
            "time_per_element_s": 1e-7,
        }
        for d in (1000, 10000)
    ]
    recs += [
        {
            "problem": "B24-L63",
            "method": "sharded-map",
            "device": "cpu",
            "batch": 64,
            "n_devices": n,
            "windows_per_s": 1e4 * n,
            "simulated_devices": True,
        }
        for n in (1, 2)
    ]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(recs))
    out = tmp_path / "figs"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "plot.py"),
            str(results),
            "--out-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("accuracy_vs_time.png", "solver_scaling.png", "throughput.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    assert not list(out.glob("*.tmp"))
    summary = (out / "summary.md").read_text()
    assert summary.count("| method | mse |") == 2  # F21-L63 and B24-L63
    assert "| 4dvarnet | 0.5 | 1 | 0.1 |" in summary
