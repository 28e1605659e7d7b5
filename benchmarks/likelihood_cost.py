"""Cost of the exact marginal log-likelihood (NoisyDot) against the Gaussian approximation, measured
the way the samplers and the quadrature see it, both in the same run.

1. ``in_loop``: what NUTS sees. A compiled ``lax.fori_loop`` of ``steps`` iterations; each iteration
   evaluates value + gradient w.r.t. (σ_x, σ_w) of the summed log-likelihood of every replicate of a
   vmapped batch (16 replicates, N = 200, M = 8) at a parameter point that moves every iteration (so
   nothing is hoisted out of the loop). Reported: µs per replicate-gradient (wall time / (steps × S)),
   median of repeats, and the exact/Gaussian ratio. Also value only.
2. ``grid``: what a quadrature sees. An 11 × 11 grid of parameter points per replicate around a
   posterior (16 replicates, N = 200, M = 8): the in-graph evaluator vmapped over replicates and
   points (one ``while_loop`` round of the worst observation paid by the whole batch) against
   ``likelihoods.loglik_grid`` (fast pass everywhere, then only the uncertified observations by the
   robust tiers in fixed-size buckets). Reported: µs per parameter point (wall / (S × K)), median of
   repeats (compiled functions warmed up first), and how many observations needed the robust tiers.
3. ``single_call``: one jitted value + gradient call (mostly dispatch for the Gaussian; kept for
   comparison with earlier figures, not the sampler's cost).

Writes benchmarks/results/likelihood_cost.json and prints a summary. ``--quick`` for a short check.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from noisydot_sbc.likelihoods import gaussian_logpdf, loglik_grid, noisydot_logpdf_with_error  # noqa: E402
from noisydot_sbc.simulate import make_design, simulate_y  # noqa: E402


def machine():
    """benchmarks/machine_info.machine() plus the uptime line (this script's JSON has quoted it)."""
    from machine_info import machine as base  # beside this script

    return {**base(), "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}


def replicates(s, n, m, sx, sw, seed=0, dtype=jnp.float64):
    keys = jax.random.split(jax.random.PRNGKey(seed), s)
    designs = [make_design(k, n, m) for k in keys]
    x = jnp.stack([d.x for d in designs]).astype(dtype)
    w = jnp.stack([d.w for d in designs]).astype(dtype)
    y = jnp.stack([simulate_y(jax.random.fold_in(k, 1), d.x, d.w, sx, sw) for k, d in zip(keys, designs)]).astype(dtype)
    return y, x, w


def exact_sum(y, x, w, sx, sw):
    return jnp.sum(noisydot_logpdf_with_error(y, x, w, sx, sw).logp)


def gauss_sum(y, x, w, sx, sw):
    return jnp.sum(gaussian_logpdf(y, x, w, sx, sw))


def timed(fn, *args, repeats):
    """Median wall time of fn(*args) (already compiled: one warm-up call first) and all repeats."""
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), ts


def in_loop(loglik, y, x, w, theta0, steps, grad=True):
    """jit(fori_loop(steps) of vmap over replicates of value(+grad)) at a point that moves each step."""
    f = jax.value_and_grad(lambda p, yy, xx, ww: loglik(yy, xx, ww, p[0], p[1])) if grad else \
        (lambda p, yy, xx, ww: loglik(yy, xx, ww, p[0], p[1]))

    @jax.jit
    def run(theta0):
        def body(t, acc):
            theta = theta0 * (1.0 + 1e-3 * jnp.sin(t.astype(theta0.dtype)))
            out = jax.vmap(f, in_axes=(None, 0, 0, 0))(theta, y, x, w)
            if grad:
                return acc + jnp.sum(out[0]) + jnp.sum(out[1])
            return acc + jnp.sum(out)
        return lax.fori_loop(0, steps, body, jnp.zeros((), theta0.dtype))

    return run, theta0


def bench_in_loop(s=16, n=200, m=8, sx=0.1, sw=0.05, steps=20, repeats=5, dtype=jnp.float64):
    y, x, w = replicates(s, n, m, sx, sw, dtype=dtype)
    theta = jnp.asarray([sx, sw], dtype)
    out = {"S": s, "N": n, "M": m, "x_noise_lvl": sx, "w_noise_lvl": sw, "dtype": jnp.dtype(dtype).name,
           "steps": steps, "repeats": repeats}
    for grad in (True, False):
        key = "value_and_grad" if grad else "value"
        res = {}
        for name, fn, st in (("exact", exact_sum, steps), ("gaussian", gauss_sum, steps * 50)):
            run, th = in_loop(fn, y, x, w, theta, st, grad)
            t0 = time.perf_counter()
            jax.block_until_ready(run(th))
            compile_s = time.perf_counter() - t0
            med, ts = timed(run, th, repeats=repeats)
            res[name] = {"us_per_replicate": 1e6 * med / (st * s), "steps": st, "compile_and_first_run_s": compile_s,
                         "repeats_us_per_replicate": [1e6 * t / (st * s) for t in ts]}
        res["ratio"] = res["exact"]["us_per_replicate"] / res["gaussian"]["us_per_replicate"]
        out[key] = res
    fb = jax.vmap(lambda yy, xx, ww: noisydot_logpdf_with_error(yy, xx, ww, theta[0], theta[1]).fallback.sum())(y, x, w)
    out["n_fallback_observations"] = int(jnp.sum(fb))
    return out


def bench_grid(s=16, n=200, m=8, sx=0.3, sw=0.35, half_width=0.5, k1=11, repeats=3, naive=True):
    """11 x 11 grid in log σ, log(truth) ± half_width, per replicate (a box around its posterior)."""
    y, x, w = replicates(s, n, m, sx, sw, seed=3)
    u = np.linspace(-half_width, half_width, k1)
    gx, gw = np.meshgrid(sx * np.exp(u), sw * np.exp(u), indexing="ij")
    sxs = np.broadcast_to(gx.reshape(1, -1), (s, k1 * k1)).copy()
    sws = np.broadcast_to(gw.reshape(1, -1), (s, k1 * k1)).copy()
    yn, xn, wn = (np.asarray(a) for a in (y, x, w))
    out = {"S": s, "N": n, "M": m, "truth": [sx, sw], "points_per_replicate": k1 * k1,
           "grid": f"log sigma in log(truth) +- {half_width}, {k1} x {k1}",
           "sigma_w_range": [float(sws.min()), float(sws.max())], "repeats": repeats}
    t0 = time.perf_counter()
    g = loglik_grid(yn, xn, wn, sxs, sws)
    out["two_phase_first_call_s"] = time.perf_counter() - t0
    med, ts = timed(lambda: loglik_grid(yn, xn, wn, sxs, sws), repeats=repeats)
    out["two_phase_us_per_point"] = 1e6 * med / (s * k1 * k1)
    out["two_phase_repeats_s"] = ts
    out["observations_on_robust_tiers"] = int(g.n_robust.sum())
    out["observations_total"] = int(s * k1 * k1 * n)
    out["max_err_per_point"] = float(g.err.max())
    gvg = loglik_grid(yn, xn, wn, sxs, sws, with_grad=True)
    med_g, _ = timed(lambda: loglik_grid(yn, xn, wn, sxs, sws, with_grad=True), repeats=repeats)
    out["two_phase_value_and_grad_us_per_point"] = 1e6 * med_g / (s * k1 * k1)
    del gvg
    # Gaussian on the same grid, in-graph (its cost is the floor)
    gfn = jax.jit(jax.vmap(jax.vmap(gauss_sum, in_axes=(None, None, None, 0, 0)), in_axes=(0, 0, 0, 0, 0)))
    med_gauss, _ = timed(gfn, y, x, w, jnp.asarray(sxs), jnp.asarray(sws), repeats=max(repeats, 5))
    out["gaussian_us_per_point"] = 1e6 * med_gauss / (s * k1 * k1)
    if naive:
        efn = jax.jit(jax.vmap(jax.vmap(exact_sum, in_axes=(None, None, None, 0, 0)), in_axes=(0, 0, 0, 0, 0)))
        t0 = time.perf_counter()
        ref = np.asarray(efn(y, x, w, jnp.asarray(sxs), jnp.asarray(sws)))
        out["naive_first_call_s"] = time.perf_counter() - t0
        med_n, _ = timed(efn, y, x, w, jnp.asarray(sxs), jnp.asarray(sws), repeats=1)
        out["naive_vmapped_us_per_point"] = 1e6 * med_n / (s * k1 * k1)
        out["max_abs_diff_two_phase_vs_naive"] = float(np.max(np.abs(ref - g.loglik)))
    return out


def bench_single_call(n=200, m=8, sx=0.1, sw=0.05, repeats=300):
    d = make_design(jax.random.PRNGKey(0), n, m)
    y = simulate_y(jax.random.PRNGKey(1), d.x, d.w, sx, sw)
    p = jnp.array([sx, sw])
    exact = jax.jit(jax.value_and_grad(lambda q: exact_sum(y, d.x, d.w, q[0], q[1])))
    gauss = jax.jit(jax.value_and_grad(lambda q: gauss_sum(y, d.x, d.w, q[0], q[1])))
    te, _ = timed(exact, p, repeats=repeats)
    tg, _ = timed(gauss, p, repeats=repeats)
    return {"N": n, "M": m, "exact_us": 1e6 * te, "gaussian_us": 1e6 * tg, "ratio": te / tg,
            "note": "one jitted call incl. dispatch; not what a sampler pays (see in_loop)"}


def main(quick=False):
    out = {"machine": machine()}
    rep = 2 if quick else 5
    out["in_loop_float64"] = bench_in_loop(steps=5 if quick else 20, repeats=rep)
    out["in_loop_float32"] = bench_in_loop(steps=5 if quick else 20, repeats=rep, dtype=jnp.float32)
    out["in_loop_heavy_float64"] = bench_in_loop(sx=0.3, sw=0.4, steps=2 if quick else 5, repeats=rep)
    out["grid"] = bench_grid(repeats=1 if quick else 3, naive=True)
    out["grid_strong_prior_region"] = bench_grid(sx=0.1, sw=0.05, repeats=1 if quick else 3, naive=not quick)
    out["single_call"] = bench_single_call(repeats=50 if quick else 300)
    out["machine"]["load_average_end"] = os.getloadavg()
    out["machine"]["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    if not quick:   # a quick run is a development check: printed, not recorded
        path = Path(__file__).parent / "results" / "likelihood_cost.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2))
    for key in ("in_loop_float64", "in_loop_float32", "in_loop_heavy_float64"):
        r = out[key]
        print(f"{key} (S={r['S']}, N={r['N']}, M={r['M']}, sigma=({r['x_noise_lvl']}, {r['w_noise_lvl']}), "
              f"{r['n_fallback_observations']} obs on the robust tiers):")
        for kind in ("value_and_grad", "value"):
            e = r[kind]
            print(f"  {kind}: exact {e['exact']['us_per_replicate']:.1f} us, gaussian {e['gaussian']['us_per_replicate']:.3f} "
                  f"us per replicate-evaluation, ratio {e['ratio']:.0f}")
    for key in ("grid", "grid_strong_prior_region"):
        gr = out[key]
        naive = f", naive vmapped {gr['naive_vmapped_us_per_point']:.0f} us" if "naive_vmapped_us_per_point" in gr else ""
        print(f"{key} ({gr['grid']}, truth {gr['truth']}, sigma_w {gr['sigma_w_range'][0]:.2f}..{gr['sigma_w_range'][1]:.2f}): "
              f"two-phase {gr['two_phase_us_per_point']:.0f} us per point (value+grad "
              f"{gr['two_phase_value_and_grad_us_per_point']:.0f}){naive}, gaussian {gr['gaussian_us_per_point']:.2f} us; "
              f"{gr['observations_on_robust_tiers']} of {gr['observations_total']} observations on the robust tiers")
    sc = out["single_call"]
    print(f"single jitted call: exact {sc['exact_us']:.0f} us, gaussian {sc['gaussian_us']:.0f} us, ratio {sc['ratio']:.1f}")
    print(f"load: {out['machine']['uptime']} -> {out['machine']['uptime_end']}")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short development run: printed, not written")
    main(quick=ap.parse_args().quick)
