"""Run the jaxda benchmark suite and write JSON records.

    python benchmarks/run.py --suite quick --out results.json [--only PATTERN]

Each `benchmarks/bench_*.py` module exposes `records(suite: str) -> Iterator[dict]`;
records carry `problem`, `method`, `device`, `batch`, accuracy fields,
`time_per_window_s`, `compile_s` and `iterations` where relevant (`bench_latency`:
`time_per_call_s`, `compiled_s`, `overhead_s`, `overhead_fraction` at batch 1). The
output file is written atomically (temporary file, then rename) after every module, so
an interrupted run keeps what it measured.
"""

import argparse
import fnmatch
import importlib
import json
import os
import pathlib
import sys
import time


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("quick", "full"), default="quick")
    parser.add_argument(
        "--only", default="*", help="glob on module names (bench_X or X) or problems"
    )
    parser.add_argument("--out", default="results.json", type=pathlib.Path)
    parser.add_argument("--x64", action="store_true", help="run in float64")
    args = parser.parse_args(argv)

    import jax

    from jaxda.io import save_json

    if args.x64:
        jax.config.update("jax_enable_x64", True)

    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    # `--only` first selects modules (`bench_var` or `var`); when it names no module it
    # is a glob on the records' `problem` (every module runs, records are filtered).
    by_module = [
        m
        for m in modules
        if fnmatch.fnmatch(m, args.only) or fnmatch.fnmatch(m[6:], args.only)
    ]
    filter_problems = not by_module
    results = []
    for name in by_module or modules:
        module = importlib.import_module(name)
        t0 = time.perf_counter()
        print(f"[{name}]", flush=True)
        for rec in module.records(args.suite):
            if filter_problems and not fnmatch.fnmatch(rec["problem"], args.only):
                continue
            rec.setdefault("suite", args.suite)
            results.append(rec)
            shown = {k: v for k, v in rec.items() if k not in ("device", "jax_version")}
            print("  " + json.dumps(shown), flush=True)
            save_json(args.out, results, indent=1)  # atomic: a stopped run keeps these
        save_json(args.out, results, indent=1)
        print(f"[{name}] {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"wrote {len(results)} records to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
