"""Cost of the exact likelihood's fast pass per observation, as the quadrature and the SBC's
``log_lik`` quantity pay it, against the same measurement of an earlier revision in the same run.

What is timed: :func:`noisydot_sbc.likelihoods.loglik_grid` (value only) on S replicates × K
parameter points, N = 200, M = 8, float64, in the strong prior's region, where the fast pass
certifies every observation (the robust tiers do not run; the script checks it), so the figure is
the fast pass's own cost plus the host-side blocking. Reported: µs per observation (wall time /
(S K N)), the median of repeats, after a warm-up call that compiles.

``--baseline REV`` also checks out REV (``git worktree``, in a temporary directory) and measures
it the same way; the two are run in alternating subprocesses (``--rounds`` of each), so drift of
the machine hits both alike. Each subprocess imports its own tree's package (checked); the
inputs are identical. Writes ``benchmarks/results/fast_pass_cost.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def measure(s: int, k: int, n: int, m: int, repeats: int) -> dict:
    """Run in a subprocess: time loglik_grid of the package on PYTHONPATH; returns a dict."""
    import time

    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    from noisydot_sbc.likelihoods import loglik_grid
    from noisydot_sbc.simulate import make_design, simulate_y

    rng = np.random.default_rng(0)
    keys = jax.random.split(jax.random.PRNGKey(0), s)
    designs = [make_design(kk, n, m) for kk in keys]
    x = np.stack([np.asarray(d.x) for d in designs])
    w = np.stack([np.asarray(d.w) for d in designs])
    y = np.stack([np.asarray(simulate_y(jax.random.fold_in(kk, 1), d.x, d.w, 0.1, 0.05)) for kk, d in zip(keys, designs)])
    sx = 0.1 * np.exp(0.3 * rng.normal(size=(s, k)))
    sw = 0.05 * np.exp(0.3 * rng.normal(size=(s, k)))
    first = loglik_grid(y, x, w, sx, sw)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = loglik_grid(y, x, w, sx, sw)
        ts.append(time.perf_counter() - t0)
    n_obs = s * k * n
    return {"us_per_observation": 1e6 * float(np.median(ts)) / n_obs,
            "repeats_us_per_observation": [1e6 * t / n_obs for t in ts],
            "observations_on_robust_tiers": int(first.n_robust.sum()), "observations": n_obs,
            "loglik_checksum": float(np.sum(res.loglik))}


def run_child(tree: str, a) -> dict:
    """measure() in a fresh interpreter that imports noisydot_sbc from ``tree``: that tree first on
    sys.path, and the editable install's import hook (which would map the name to this checkout
    whatever sys.path says) taken out of sys.meta_path. Checked: the module's file is under ``tree``."""
    code = ("import json, sys; "
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            f"sys.path[:0] = [{tree!r}, {str(HERE)!r}]; "
            "import noisydot_sbc; from fast_pass_cost import measure; "
            f"r = measure({a.replicates}, {a.points}, {a.obs}, {a.inputs}, {a.repeats}); "
            "r['package'] = noisydot_sbc.__file__; print(json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not Path(res["package"]).resolve().is_relative_to(Path(tree).resolve()):
        raise RuntimeError(f"the subprocess imported {res['package']}, not the tree {tree}")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=None, help="git revision to measure in the same run (e.g. HEAD~1)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating subprocess rounds per revision")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per subprocess")
    ap.add_argument("--replicates", type=int, default=16)
    ap.add_argument("--points", type=int, default=40)
    ap.add_argument("--obs", type=int, default=200)
    ap.add_argument("--inputs", type=int, default=8)
    ap.add_argument("--out", default=str(HERE / "results" / "fast_pass_cost.json"))
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from machine_info import machine

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    runs = {f"current ({rev}{', uncommitted changes' if dirty else ''})": str(ROOT)}
    tmp = None
    if a.baseline:
        tmp = tempfile.mkdtemp(prefix="fast_pass_baseline_")
        subprocess.run(["git", "worktree", "add", "--detach", tmp, a.baseline], cwd=ROOT, check=True, capture_output=True)
        base_rev = subprocess.run(["git", "rev-parse", "--short", a.baseline], cwd=ROOT, capture_output=True,
                                  text=True).stdout.strip()
        runs[f"baseline ({a.baseline} = {base_rev})"] = tmp
    results = {name: [] for name in runs}
    try:
        for r in range(a.rounds):
            for name, path in runs.items():
                res = run_child(path, a)
                results[name].append(res)
                print(f"round {r + 1}: {name}: {res['us_per_observation']:.3f} us per observation "
                      f"({res['observations_on_robust_tiers']} of {res['observations']} on the robust tiers)", flush=True)
    finally:
        if tmp:
            subprocess.run(["git", "worktree", "remove", "--force", tmp], cwd=ROOT, capture_output=True)
    import numpy as np

    summary = {name: float(np.median([x["us_per_observation"] for x in rs])) for name, rs in results.items()}
    out = {"machine": machine(), "what": "loglik_grid value only, strong-prior region (fast pass certifies all), "
           f"S={a.replicates} replicates x K={a.points} points, N={a.obs}, M={a.inputs}, float64; "
           "median over rounds of each subprocess's median", "rounds": a.rounds, "repeats": a.repeats,
           "us_per_observation": summary, "runs": results}
    if a.baseline:
        cur, base = list(summary.values())
        out["baseline_over_current"] = base / cur
        print(f"baseline / current: {base / cur:.2f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
