"""Quadrature against NUTS: seconds per fit on the same replicates, and accuracy against long NUTS runs.

Timing (``--task timing``, default): design N = 200, M = 8, float64, strong prior; on the SAME
replicates in the same process: NUTS on the exact marginal model, quadrature on the marginal
model (the corrected lattice, default, and the exact likelihood at every node, ``exact_stride=1``),
NUTS on the Gaussian approximation, quadrature on the Gaussian approximation. Each method
runs once to compile, then ``--repeats`` times; seconds per fit = median over repeats of
(wall time / replicates). Also per method: likelihood evaluations per fit, certified fraction.

Accuracy (``--task accuracy``): replicates spanning strong/weak priors, M in {1, 2, 8} and a
degenerate design (no spread in |x|: ``x_dist=magnitude, x_spread=0``); per replicate a long
NUTS run of the marginal model (4 chains, ``--long-samples`` draws each, >= 20,000 in all) and the
quadrature posterior of the same model. Per parameter and quantile (5/50/95 %): the difference
|q_quad - q_nuts| in exact-posterior sds, the Monte Carlo standard error of the NUTS quantile
(ArviZ ``mcse(method="quantile")``), the quadrature's error estimate, and whether
|q_quad - q_nuts| <= error_estimate + 3 MCSE (the error estimate bounds the quantile error
within the Monte Carlo error of the reference).

Dense (``--task dense``): the same cases and replicates against a brute-force reference without
Monte Carlo error: the exact likelihood at every cell of a ``--dense-n`` x ``--dense-n`` grid of
(log σ_x, log σ_w) over a box that holds all but 1e-7 of the mass at its outer cells. Per
replicate the largest error of the 5/50/95 % quantiles and the log-scale mean and sd, in
posterior sds, and whether the certified error estimate bounds it.

Public API only (noisydot_sbc.inference, .models, .priors, .simulate).
  python benchmarks/quadrature_vs_nuts.py                          # timing, 8 replicates, 3 repeats
  python benchmarks/quadrature_vs_nuts.py --task accuracy          # >= 30 replicates (long)
  python benchmarks/quadrature_vs_nuts.py --task accuracy --smoke  # 6 replicates, short NUTS
  python benchmarks/quadrature_vs_nuts.py --task corrected --replicates 16  # corrected vs exact at every node
  python benchmarks/quadrature_vs_nuts.py --task dense --acc-obs 50  # vs brute-force grids, all 8 cases
Writes benchmarks/results/quadrature_<task>.json (``--out`` overrides).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import arviz as az  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
from scipy.interpolate import PchipInterpolator  # noqa: E402

from noisydot_sbc.inference import get_method  # noqa: E402
from noisydot_sbc.inference.quadrature import QuadratureConfig, integrate, posterior_quantiles  # noqa: E402
from noisydot_sbc.models import PARAMS, build_model  # noqa: E402
from noisydot_sbc.priors import STRONG, WEAK  # noqa: E402
from noisydot_sbc.simulate import make_design, simulate_y  # noqa: E402

PROBS = (0.05, 0.5, 0.95)


from machine_info import machine  # noqa: E402  (benchmarks/machine_info.py, beside this script)


def replicates(prior, S, N, M, seed, degenerate=False):
    """Truth from the prior, design, y from the true process (float64)."""
    xs, ws, ys, truth = [], [], [], []
    for s in range(S):
        kd, kt, ky = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), s), 3)
        d = make_design(kd, N, M, x_dist="magnitude", x_spread=0.0) if degenerate else make_design(kd, N, M)
        t = prior.sample(kt)
        sx, sw = float(t["x_noise_lvl"]), float(t["w_noise_lvl"])
        truth.append((sx, sw))
        xs.append(d.x), ws.append(d.w), ys.append(simulate_y(ky, d.x, d.w, abs(sx), abs(sw)))
    return dict(x=jnp.stack(xs), w=jnp.stack(ws), y=jnp.stack(ys)), np.array(truth)


def timing(a) -> dict:
    data, _ = replicates(STRONG, a.replicates, a.obs, a.inputs, seed=a.seed)
    S = a.replicates
    nuts = dict(num_warmup=a.warmup, num_samples=a.samples, num_chains=2, chain_method=a.nuts_chain_method)
    opts = quad_options(a)
    # NUTS on the exact model last: after its long run the machine measured the quadrature up to
    # 1.6x slower than in a run without it (2026-12-06), so the cheap methods go first
    runs = {
        "quadrature_marginal": (get_method("quadrature", num_draws=a.draws, **opts), build_model("marginal", STRONG)),
        "quadrature_marginal_one_thread": (get_method("quadrature", num_draws=a.draws, **dict(opts, chain_method="vectorized")),
                                           build_model("marginal", STRONG)),
        "quadrature_marginal_exact_every_node": (get_method("quadrature", num_draws=a.draws, **dict(opts, exact_stride=1)),
                                                 build_model("marginal", STRONG)),
        "quadrature_gaussian": (get_method("quadrature", num_draws=a.draws, **opts), build_model("gaussian", STRONG)),
        "nuts_gaussian": (get_method("nuts", **nuts), build_model("gaussian", STRONG)),
        "nuts_marginal": (get_method("nuts", **nuts), build_model("marginal", STRONG)),
    }
    if a.skip_nuts_marginal:
        runs.pop("nuts_marginal")
    out = {}
    for name, (method, model) in runs.items():
        t0 = time.perf_counter()
        post = method.fit(jax.random.PRNGKey(0), model, data)
        first = time.perf_counter() - t0
        per_fit = []
        for r in range(1 if name == "nuts_marginal" else a.repeats):  # seconds per fit; one repeat of the slow one
            t0 = time.perf_counter()
            post = method.fit(jax.random.PRNGKey(r + 1), model, data)
            per_fit.append((time.perf_counter() - t0) / S)
        entry = {"seconds_per_fit_median": statistics.median(per_fit), "seconds_per_fit_repeats": per_fit,
                 "first_call_seconds": first, "failed": int(np.sum(post.failed))}
        if post.inference == "quadrature":
            fs = post.fit_stats
            entry.update(evaluations_per_fit_median=float(np.median(fs["n_evaluations"])),
                         evaluations_per_fit_mean=float(np.mean(fs["n_evaluations"])),
                         certified_fraction=float(np.mean(fs["certified"])),
                         error_estimate_max=float(np.max(fs["error_estimate"])))
        out[name] = entry
        print(f"{name:22s} {entry['seconds_per_fit_median'] * 1e3:9.1f} ms/fit  (first call {first:.1f} s)", flush=True)
    return {"design": {"N": a.obs, "M": a.inputs, "prior": "strong", "dtype": "float64", "replicates": S},
            "quadrature_options": opts, "nuts": nuts, "repeats": a.repeats, "methods": out}


def corrected(a) -> dict:
    """The corrected lattice (default) against the exact likelihood at every node with a 5x
    tighter tolerance, on the same replicates (design as for timing): per replicate the largest
    error of log mass, log-scale means and sds and 5/50/95 % quantiles (posterior sds), the error
    estimate, the exact evaluations of both."""
    data, _ = replicates(STRONG, a.replicates, a.obs, a.inputs, seed=a.seed)
    model = build_model("marginal", STRONG)
    ref = integrate(jax.random.PRNGKey(0), model, data,
                    QuadratureConfig(num_draws=10, exact_stride=1, tolerance=0.002, max_nodes=4000))
    res = integrate(jax.random.PRNGKey(0), model, data, QuadratureConfig(num_draws=10))
    qr, qc = posterior_quantiles(ref, PROBS), posterior_quantiles(res, PROBS)
    actual = np.abs(res.log_marginal_likelihood - ref.log_marginal_likelihood)
    for p in PARAMS:
        sd = ref.moments[p]["log_sd"]
        actual = np.maximum(actual, np.max(np.abs(np.log(qc[p]) - np.log(qr[p])), axis=1) / sd)
        for m in ("log_mean", "log_sd"):
            actual = np.maximum(actual, np.abs(res.moments[p][m] - ref.moments[p][m]) / sd)
    rows = [{"actual_error": float(actual[s]), "error_estimate": float(res.error_estimate[s]),
             "correction_error": float(res.correction_error[s]), "certified": bool(res.certified[s]),
             "n_exact": int(res.n_evaluations[s]), "n_exact_reference": int(ref.n_evaluations[s]),
             "reference_error_estimate": float(ref.error_estimate[s])} for s in range(a.replicates)]
    summary = {"replicates": a.replicates, "max_actual_error": float(actual.max()),
               "estimate_bounds_actual": int(np.sum(actual <= res.error_estimate + ref.error_estimate)),
               "certified": int(res.certified.sum()), "n_exact_mean": float(res.n_evaluations.mean()),
               "n_exact_reference_mean": float(ref.n_evaluations.mean())}
    print(json.dumps(summary), flush=True)
    return {"design": {"N": a.obs, "M": a.inputs, "prior": "strong"}, "summary": summary, "rows": rows}


def accuracy(a, partial=None) -> dict:
    cases = CASES
    per_case = a.per_case
    nuts = get_method("nuts", num_warmup=a.long_warmup, num_samples=a.long_samples, num_chains=4,
                      chain_method="vectorized")
    rows = []
    only = {int(c) for c in a.cases.split(",") if c.strip()}
    for ci, (pname, prior, M, degenerate) in enumerate(cases):
        if only and ci not in only:
            continue
        data, truth = replicates(prior, per_case, a.acc_obs, M, seed=1000 + ci, degenerate=degenerate)
        model = build_model("marginal", prior)
        # the long NUTS reference is kept per case (its log draws), so the quadrature can be
        # re-assessed against it without rerunning NUTS (--reference-dir)
        cache = Path(a.reference_dir) / f"case{ci}_{pname}_M{M}_deg{int(degenerate)}_N{a.acc_obs}_S{per_case}.npz"
        if cache.exists():
            z_ref = np.load(cache)
            ref_z = {p: z_ref[p] for p in PARAMS}
            ref_failed, tn = z_ref["failed"], float(z_ref["seconds"])
        else:
            t0 = time.perf_counter()
            ref = nuts.fit(jax.random.PRNGKey(100 + ci), model, data)
            tn = time.perf_counter() - t0
            ref_z = {p: np.log(np.abs(np.asarray(ref.samples[p]))) for p in PARAMS}  # (S, chain, draw)
            ref_failed = np.asarray(ref.failed)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, failed=ref_failed, seconds=tn, **ref_z)
        t0 = time.perf_counter()
        exact = integrate(jax.random.PRNGKey(ci), model, data, QuadratureConfig(num_draws=100, **quad_options(a)))
        tq = time.perf_counter() - t0
        eq = posterior_quantiles(exact, PROBS)
        for s in range(per_case):
            row = {"prior": pname, "M": M, "degenerate": degenerate, "truth": truth[s].tolist(),
                   "certified": bool(exact.certified[s]), "error_estimate": float(exact.error_estimate[s]),
                   "n_evaluations": int(exact.n_evaluations[s]), "nuts_failed": bool(ref_failed[s]),
                   "quad_seconds_per_fit": tq / per_case, "nuts_seconds_per_fit": tn / per_case, "params": {}}
            for p in PARAMS:
                z = ref_z[p][s]  # (chain, draw) log draws
                sd = float(exact.moments[p]["log_sd"][s])
                entry = {"exact_log_sd": sd, "quantiles": []}
                for k, prob in enumerate(PROBS):
                    nq = float(np.quantile(z, prob))
                    mcse = float(az.mcse(z, method="quantile", prob=prob))
                    dq = abs(float(np.log(eq[p][s, k])) - nq)
                    entry["quantiles"].append({"prob": prob, "quad": float(np.log(eq[p][s, k])), "nuts": nq,
                                               "diff_sd": dq / sd, "mcse_sd": mcse / sd,
                                               "within_3mcse": dq <= 3 * mcse,
                                               "bounded": dq / sd <= exact.error_estimate[s] + 3 * mcse / sd})
                entry["rhat_max"] = float(np.max(az.rhat(z)))
                row["params"][p] = entry
            rows.append(row)
        print(f"case {pname} M={M} degenerate={degenerate}: quad {tq / per_case:.2f} s/fit, "
              f"nuts {tn / per_case:.1f} s/fit, certified {np.mean(exact.certified):.2f}", flush=True)
        if partial is not None:  # keep what is done if a long run is stopped
            partial({"rows_so_far": rows})
    qs = [qq for r in rows if not r["nuts_failed"] for e in r["params"].values() for qq in e["quantiles"]]
    cert = [qq for r in rows if r["certified"] and not r["nuts_failed"] for e in r["params"].values()
            for qq in e["quantiles"]]
    summary = {"replicates": len(rows), "quantiles_compared": len(qs),
               "fraction_within_3mcse": float(np.mean([q["within_3mcse"] for q in qs])) if qs else None,
               "certified_fraction": float(np.mean([r["certified"] for r in rows])),
               "certified_fraction_bounded": float(np.mean([q["bounded"] for q in cert])) if cert else None,
               "max_diff_sd_certified": float(max(q["diff_sd"] for q in cert)) if cert else None}
    print(json.dumps(summary), flush=True)
    return {"nuts": {"num_chains": 4, "num_warmup": a.long_warmup, "num_samples": a.long_samples},
            "N": a.acc_obs, "summary": summary, "rows": rows}


CASES = [("strong", STRONG, 8, False), ("strong", STRONG, 2, False), ("strong", STRONG, 1, False),
         ("weak", WEAK, 8, False), ("weak", WEAK, 2, False), ("weak", WEAK, 1, False),
         ("strong", STRONG, 8, True), ("weak", WEAK, 8, True)]


def quad_options(a) -> dict:
    """--option KEY=VALUE pairs as QuadratureConfig fields (values parsed as Python literals)."""
    import ast

    out = {}
    for item in a.option:
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def dense_reference(model, data, s, lo, hi, n):
    """Brute-force posterior of replicate s on an n x n tensor grid of (log σ_x, log σ_w) over the
    box [lo, hi] (cell centres): the exact likelihood (``likelihoods.loglik_grid``) at every cell,
    no adaptivity, no interpolation. Returns per parameter the 5/50/95 % quantiles (midpoint CDF,
    linear interpolation), log-scale mean and sd, and the mass share of the box's outer cells."""
    from noisydot_sbc.likelihoods import loglik_grid

    ax = [lo[k] + (hi[k] - lo[k]) * (np.arange(n) + 0.5) / n for k in range(2)]
    ZX, ZW = np.meshgrid(ax[0], ax[1], indexing="ij")
    sx, sw = np.exp(ZX.ravel()), np.exp(ZW.ravel())
    y, x, w = (np.asarray(data[k])[s:s + 1] for k in ("y", "x", "w"))
    ll = loglik_grid(y, x, w, sx[None], sw[None], float(model.y_noise)).loglik[0].reshape(n, n)
    lp = ll + np.asarray(model.prior.log_prob(jnp.exp(ZX), jnp.exp(ZW))) + ZX + ZW
    lp = np.where(np.isfinite(lp), lp, -np.inf)
    p = np.exp(lp - lp.max())
    p /= p.sum()
    edge = float(p[0].sum() + p[-1].sum() + p[:, 0].sum() + p[:, -1].sum())
    out = {"edge_mass": edge}
    for k, mk in enumerate((p.sum(1), p.sum(0))):
        # the CDF at the cell edges: the cumulative midpoint masses plus their δ² f'/24 term
        # (fourth order), inverted by monotone cubic interpolation
        width = ax[k][1] - ax[k][0]
        edges = np.concatenate([[ax[k][0] - width / 2], ax[k] + width / 2])
        cdf = np.concatenate([[0.0], np.cumsum(mk)])
        cdf[1:-1] += (mk[1:] - mk[:-1]) / 24.0
        cdf = np.maximum.accumulate(np.clip(cdf, 0.0, 1.0))
        keep = np.concatenate([[True], np.diff(cdf) > 1e-300])
        mean = float((mk * ax[k]).sum())
        out[PARAMS[k]] = dict(q=PchipInterpolator(cdf[keep], edges[keep])(PROBS), log_mean=mean,
                              log_sd=float(np.sqrt((mk * (ax[k] - mean) ** 2).sum())))
    return out


def _dense_row(pname, M, degenerate, truth, res, q, s, ref, lo, hi, dense_n):
    """One replicate's errors against its dense reference, in reference posterior sds."""
    row = {"prior": pname, "M": M, "degenerate": degenerate, "truth": np.asarray(truth).tolist(),
           "certified": bool(res.certified[s]), "error_estimate": float(res.error_estimate[s]),
           "n_evaluations": int(res.n_evaluations[s]), "dense_edge_mass": ref["edge_mass"], "dense_n": dense_n,
           "box": [lo.tolist(), hi.tolist()], "params": {}}
    worst = 0.0
    for p in PARAMS:
        r = ref[p]
        sd = r["log_sd"]
        dq = (np.log(q[p][s]) - r["q"]) / sd
        ds = (res.moments[p]["log_sd"][s] - sd) / sd
        dm = None if r["log_mean"] is None else float((res.moments[p]["log_mean"][s] - r["log_mean"]) / sd)
        row["params"][p] = {"dense_quantiles": np.asarray(r["q"]).tolist(), "quad_quantiles": np.log(q[p][s]).tolist(),
                            "quantile_error_sd": dq.tolist(), "log_mean_error_sd": dm,
                            "log_sd_error_sd": float(ds), "dense_log_sd": sd, "dense_log_mean": r["log_mean"]}
        worst = max(worst, float(np.max(np.abs(dq))), abs(float(ds)), 0.0 if dm is None else abs(dm))
    row["max_error_sd"] = worst
    row["bounded"] = bool(worst <= res.error_estimate[s])
    return row


def _stored_references(path):
    """The brute-force references of an earlier ``--task dense`` run, by (case label, replicate):
    {"truth", "box", "edge_mass", "dense_n", param: {"q", "log_sd", "log_mean" (None if not stored)}}."""
    rows = json.loads(Path(path).read_text())["dense"]["rows"]
    out, count = {}, {}
    for r in rows:
        label = (r["prior"], r["M"], r["degenerate"])
        s = count.get(label, 0)
        count[label] = s + 1
        ref = {"truth": r["truth"], "box": r["box"], "edge_mass": r["dense_edge_mass"], "dense_n": r["dense_n"]}
        for p in PARAMS:
            e = r["params"][p]
            ref[p] = {"q": np.asarray(e["dense_quantiles"]), "log_sd": e["dense_log_sd"],
                      "log_mean": e.get("dense_log_mean")}
        out[label + (s,)] = ref
    return out


def dense(a, partial=None) -> dict:
    """The quadrature against brute-force dense grids of the exact model, every case of --task accuracy.
    With ``--reference FILE`` (an earlier dense run) the grids are not recomputed: the quadrature
    (with ``--option`` overrides) is compared against the stored quantiles and sds (and log-scale
    means where stored), on the same replicates (their truths are checked)."""
    rows = []
    only = {int(c) for c in a.cases.split(",") if c.strip()}
    stored = _stored_references(a.reference) if a.reference else None
    options = dict(num_draws=100, **quad_options(a))
    quad_seconds = 0.0
    for ci, (pname, prior, M, degenerate) in enumerate(CASES):
        if only and ci not in only:
            continue
        data, truth = replicates(prior, a.per_case, a.acc_obs, M, seed=1000 + ci, degenerate=degenerate)
        model = build_model("marginal", prior)
        t0 = time.perf_counter()
        res = integrate(jax.random.PRNGKey(ci), model, data, QuadratureConfig(**options))
        tq = time.perf_counter() - t0
        quad_seconds += tq
        q = posterior_quantiles(res, PROBS)
        t0 = time.perf_counter()
        for s in range(a.per_case):
            if stored is not None:
                ref = stored[(pname, M, degenerate, s)]
                if not np.allclose(ref["truth"], truth[s], rtol=1e-12):
                    raise SystemExit(f"--reference: case {ci} replicate {s} has truth {ref['truth']}, this run {truth[s]}")
                lo, hi = np.asarray(ref["box"][0]), np.asarray(ref["box"][1])
                row = _dense_row(pname, M, degenerate, truth[s], res, q, s, ref, lo, hi, ref["dense_n"])
                rows.append(row)
                print(f"case {ci} {pname} M={M} deg={degenerate} rep {s}: max error {row['max_error_sd']:.4f} sd, "
                      f"estimate {res.error_estimate[s]:.4f}, certified {res.certified[s]}", flush=True)
                continue
            # the box: where the quadrature's marginal CDFs lie in [1e-7, 1 - 1e-7], widened by a
            # quarter of its width on each side; widened again while its outer cells hold > 1e-7
            lo, hi = np.empty(2), np.empty(2)
            for k, p in enumerate(PARAMS):
                edges, cdf = res.marginals[p][0][s], res.marginals[p][1][s]
                a_, b_ = np.interp([1e-7, 1 - 1e-7], cdf, edges)
                lo[k], hi[k] = a_ - 0.25 * (b_ - a_), b_ + 0.25 * (b_ - a_)
            for _ in range(4):
                ref = dense_reference(model, data, s, lo, hi, a.dense_n)
                if ref["edge_mass"] <= 1e-7:
                    break
                mid, half = (lo + hi) / 2, (hi - lo) / 2
                lo, hi = mid - 1.5 * half, mid + 1.5 * half
            row = _dense_row(pname, M, degenerate, truth[s], res, q, s, ref, lo, hi, a.dense_n)
            rows.append(row)
            print(f"case {ci} {pname} M={M} deg={degenerate} rep {s}: max error {row['max_error_sd']:.4f} sd, estimate "
                  f"{res.error_estimate[s]:.4f}, certified {res.certified[s]}, edge mass {ref['edge_mass']:.1e}",
                  flush=True)
        print(f"case {ci}: quadrature {tq / a.per_case:.2f} s/fit, dense grid {(time.perf_counter() - t0) / a.per_case:.1f} "
              f"s/replicate", flush=True)
        if partial is not None:  # keep what is done if a long run is stopped
            partial({"N": a.acc_obs, "grid": a.dense_n, "rows_so_far": rows})
    cert = [r for r in rows if r["certified"]]
    summary = {"replicates": len(rows), "certified": len(cert),
               "certified_bounded_fraction": float(np.mean([r["bounded"] for r in cert])) if cert else None,
               "max_error_sd_certified": float(max(r["max_error_sd"] for r in cert)) if cert else None,
               "max_error_estimate_certified": float(max(r["error_estimate"] for r in cert)) if cert else None,
               "largest_ratio_error_to_estimate_certified":
                   float(max(r["max_error_sd"] / r["error_estimate"] for r in cert)) if cert else None,
               "quadrature_seconds": quad_seconds}
    print(json.dumps(summary), flush=True)
    out = {"N": a.acc_obs, "grid": a.dense_n, "quadrature_options": options, "summary": summary, "rows": rows}
    if a.reference:
        out["reference"] = {"file": Path(a.reference).name,
                            "note": "brute-force grids reused from this file; log-scale means compared where stored"}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("timing", "accuracy", "corrected", "dense"), default="timing")
    p.add_argument("--dense-n", type=int, default=300, help="dense: grid points per axis of the brute-force reference")
    p.add_argument("--replicates", type=int, default=8)
    p.add_argument("--obs", type=int, default=200)
    p.add_argument("--inputs", type=int, default=8)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--draws", type=int, default=1000, help="quadrature draws per replicate (L)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nuts-chain-method", default="parallel")
    p.add_argument("--skip-nuts-marginal", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-case", type=int, default=4, help="accuracy: replicates per case (8 cases)")
    p.add_argument("--acc-obs", type=int, default=200)
    p.add_argument("--long-warmup", type=int, default=1000)
    p.add_argument("--long-samples", type=int, default=5000, help="per chain (4 chains)")
    p.add_argument("--reference-dir", default=str(ROOT / "benchmarks" / "results" / "nuts_reference"),
                   help="accuracy: where the long NUTS runs' log draws are kept per case (reused if present)")
    p.add_argument("--cases", default="", help="accuracy: comma-separated case indices to run (default all 8)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script runs")
    p.add_argument("--reference", help="dense: an earlier dense JSON whose brute-force grids are reused")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="dense, timing: a QuadratureConfig field for the quadrature (repeatable), e.g. dz=0.5")
    p.add_argument("--out")
    a = p.parse_args()
    if a.smoke:
        a.replicates, a.repeats, a.warmup, a.samples, a.per_case = 2, 1, 100, 100, 1
        a.long_warmup, a.long_samples, a.acc_obs, a.obs = 100, 200, 50, 50
    info = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "smoke": a.smoke}
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"quadrature_{a.task}.json"

    def write(result):
        out.write_text(json.dumps(dict(info, **{a.task: result}), indent=2, default=float))

    if a.task == "timing":
        write(timing(a))
    elif a.task == "corrected":
        write(corrected(a))
    elif a.task == "dense":
        write(dense(a, partial=write))
    else:
        write(accuracy(a, partial=write))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
