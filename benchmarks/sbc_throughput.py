"""SBC throughput: the NumPyro MCMC loop users write today vs this project's batched engine.

Same SBC three ways, in one process (see benchmarks/README or docs/engine.md):
  (a) one ``numpyro.infer.MCMC(NUTS(model)).run`` per replicate (``jit_model_args=True``),
      timed on a subset of replicates (``--numpyro-fits``) and extrapolated per fit;
  (b) ``noisydot_sbc.inference.fit_batch`` on the Gaussian model, every chain_method, >= 3 repeats;
  (c) the same engine on the exact marginal model (NoisyDot likelihood);
  (d) run length from the SBC's L (``NUTSConfig.target_ess``) against the fixed default, 2 chains:
      fits/s and the ESS the returned draws achieve;
  (e) the cost of the in-loop progress callback (same run with and without; draws must be equal).
Public API only (noisydot_sbc.inference, .diagnostics, .models, .priors, .simulate).
Also: the lower limit (total leapfrog steps x measured time of one batched gradient), SBC
ranks and 90% interval coverage (so that the timed code is shown to be correct).

Full run (default):  python benchmarks/sbc_throughput.py
Smoke run:           python benchmarks/sbc_throughput.py --smoke --out /tmp/smoke.json
Writes benchmarks/results/sbc_throughput_<YYYY-MM-DD>.json (``--out`` overrides).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicates", type=int, default=100)
    p.add_argument("--obs", type=int, default=200, help="N observations per replicate")
    p.add_argument("--inputs", type=int, default=8, help="M inputs")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of each engine mode")
    p.add_argument("--numpyro-fits", type=int, default=6, help="replicates timed for the NumPyro loop")
    p.add_argument("--devices", type=int, default=2, help="host devices for chain_method='parallel'")
    p.add_argument("--marginal-budget-s", type=float, default=150.0,
                   help="time allowed for the marginal-model part; fewer replicates if the probe says so")
    p.add_argument("--skip-marginal", action="store_true")
    p.add_argument("--target-ess", type=int, default=100, help="(d): L, the effectively independent draws wanted")
    p.add_argument("--pilot", type=int, default=200, help="(d): pilot length (num_samples) with target_ess")
    p.add_argument("--ess-replicates", type=int, default=200, help="(d): replicates (N, M as above)")
    p.add_argument("--only", choices=["run-length"], default=None,
                   help="run-length: only (d) and (e) at the full sizes (a few minutes)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs, figures meaningless")
    p.add_argument("--out", type=str, default=None)
    a = p.parse_args()
    if a.smoke:
        a.replicates, a.warmup, a.samples, a.repeats, a.numpyro_fits = 8, 50, 60, 1, 2
        a.marginal_budget_s, a.ess_replicates, a.pilot, a.target_ess = 10.0, 8, 40, 30
    return a


ARGS = _parse()
# host devices must be requested before JAX initialises its backend
from noisydot_sbc.inference.driver import configure_host_devices  # noqa: E402

configure_host_devices(ARGS.devices)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

from noisydot_sbc.diagnostics import rhat_ess  # noqa: E402
from noisydot_sbc.inference import NUTSConfig, fit_batch  # noqa: E402
from noisydot_sbc.inference.driver import resolve_chain_method  # noqa: E402
from noisydot_sbc.inference.potential import build_potential  # noqa: E402
from noisydot_sbc.models import PARAMS  # noqa: E402
from noisydot_sbc.priors import STRONG  # noqa: E402
from noisydot_sbc.simulate import make_design, simulate_y  # noqa: E402


from machine_info import machine  # noqa: E402  (benchmarks/machine_info.py, beside this script)


def simulate(key, S, N, M):
    """Truth from the strong prior, a design per replicate, y from the true process."""
    k_th, k_design, k_y = jax.random.split(key, 3)
    theta = STRONG.sample(k_th, (S,))
    designs = [make_design(k, N, M, dtype=jnp.float32) for k in jax.random.split(k_design, S)]
    x = jnp.stack([d.x for d in designs])
    w = jnp.stack([d.w for d in designs])
    ky = jax.random.split(k_y, S)
    y = jnp.stack([simulate_y(ky[s], x[s], w[s], theta["x_noise_lvl"][s], theta["w_noise_lvl"][s]) for s in range(S)])
    return {"x": x, "w": w, "y": y}, {k: np.asarray(v) for k, v in theta.items()}


def sbc_summary(draws: dict, theta: dict, n_rank_draws=100) -> dict:
    """Ranks of the truth among thinned draws, 90% central-interval coverage, chi² uniformity."""
    from scipy import stats

    out = {}
    for p in PARAMS:
        d = np.asarray(draws[p]).reshape(len(theta[p]), -1)
        ok = np.all(np.isfinite(d), axis=1)
        d, t = d[ok], theta[p][ok]
        thin = max(1, d.shape[1] // n_rank_draws)
        dt = d[:, ::thin][:, :n_rank_draws]
        ranks = np.sum(dt < t[:, None], axis=1)
        lo, hi = np.quantile(d, [0.05, 0.95], axis=1)
        cover = float(np.mean((t > lo) & (t < hi)))
        n_bins = 10 if len(ranks) >= 50 else 4
        hist = np.histogram(ranks, bins=n_bins, range=(0, dt.shape[1] + 1))[0]
        out[p] = {
            "n_replicates": int(ok.sum()),
            "coverage_90": cover,
            "coverage_90_binomial_sd": float(np.sqrt(0.09 / max(ok.sum(), 1))),
            "rank_hist": hist.tolist(),
            "rank_chi2_pvalue": float(stats.chisquare(hist).pvalue),
            "n_rank_draws": int(dt.shape[1]),
        }
    return out


def time_numpyro_loop(model, data, theta, n_fits, cfg):
    """(a): one MCMC(...).run per replicate, the loop users write today."""
    mcmc = MCMC(NUTS(model, target_accept_prob=cfg.target_accept_prob), num_warmup=cfg.num_warmup,
                num_samples=cfg.num_samples, num_chains=1, progress_bar=False, jit_model_args=True)
    t0 = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(10_000), data["x"][0], data["w"][0], data["y"][0])  # compile (not timed)
    jax.block_until_ready(mcmc.get_samples())
    compile_and_first = time.perf_counter() - t0
    times, draws = [], {p: [] for p in PARAMS}
    for s in range(n_fits):
        t0 = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(s), data["x"][s], data["w"][s], data["y"][s])
        smp = jax.block_until_ready(mcmc.get_samples())
        times.append(time.perf_counter() - t0)
        for p in PARAMS:
            draws[p].append(np.asarray(smp[p]))
    return {
        "seconds_per_fit_median": float(np.median(times)),
        "seconds_per_fit_all": times,
        "fits_per_second": 1.0 / float(np.median(times)),
        "n_fits_timed": n_fits,
        "extrapolated": f"timed {n_fits} of the replicates after one untimed compile run; per-fit median extrapolated",
        "first_run_seconds_including_compile": compile_and_first,
        "sbc_on_timed_subset": sbc_summary({p: np.stack(v) for p, v in draws.items()},
                                           {p: theta[p][:n_fits] for p in PARAMS}),
    }


def time_engine(model, data, theta, cfg, repeats):
    """(b)/(c): fit_batch, ``repeats`` timed calls (compile excluded), median."""
    S = data["y"].shape[0]
    walls, comps, fit = [], [], None
    for r in range(repeats):
        fit = fit_batch(jax.random.PRNGKey(r), model, data, cfg)
        walls.append(fit.wall_time)
        comps.append(fit.compile_time)
    med = float(np.median(walls))
    n_lf = np.asarray(fit.n_leapfrog, dtype=np.float64)
    return fit, {
        "chain_method": fit.chain_method,
        "wall_seconds_median": med,
        "wall_seconds_all": walls,
        "seconds_per_fit": med / S,
        "fits_per_second": S / med,
        "compile_seconds": float(max(comps)),
        "failed_replicates": int(fit.failed.sum()),
        "leapfrog_steps_per_fit_mean": float(n_lf.mean()),
        "leapfrog_steps_per_fit_max": float(n_lf.max()),
        "balance_mean_over_max": float(n_lf.mean() / n_lf.max()),
        "mean_tree_depth": float(fit.sample_stats["tree_depth"].mean()),
        "divergences": int(fit.sample_stats["diverging"].sum()),
        "sbc": sbc_summary({p: fit.samples[p] for p in PARAMS}, theta),
    }


def batched_gradient_seconds(model, data, reps=2000):
    """Time of one batched value-and-gradient of the potential over all replicates, measured
    inside a compiled loop (as the sampler uses it), data-only terms hoisted as in the engine."""
    spec = build_potential(model, data)
    prepared = jax.vmap(spec.prepare)(data)
    S = data["y"].shape[0]
    z0 = jnp.zeros((S, spec.dim), spec.dtype)
    vg = jax.vmap(spec.value_and_grad)

    @jax.jit
    def loop(z):
        def body(i, z):
            v, g = vg(z, prepared)
            return z - 1e-7 * g + 1e-12 * v[:, None]

        return lax_fori(reps, body, z)

    jax.block_until_ready(loop(z0))
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(loop(z0))
        ts.append((time.perf_counter() - t0) / reps)
    return float(np.median(ts))


def lax_fori(n, body, init):
    return jax.lax.fori_loop(0, n, body, init)


def run_marginal(model, data, theta, cfg, mode, steps_per_fit_gauss, gauss_res):
    """(c): the engine on the exact marginal model. Its likelihood (Fourier inversion per
    observation) costs far more per gradient than the Gaussian one, so the full configuration
    does not fit in the benchmark's time: probe the batched gradient, then run a reduced
    configuration (fewer replicates / iterations, chosen to fit --marginal-budget-s) and
    extrapolate per fit with the Gaussian run's leapfrog-step count."""
    S_m = min(4, data["y"].shape[0])
    sub = {k: v[:S_m] for k, v in data.items()}
    th = {k: v[:S_m] for k, v in theta.items()}
    t_grad = batched_gradient_seconds(model, sub, reps=3)
    steps_per_iter = steps_per_fit_gauss / (cfg.num_warmup + cfg.num_samples)
    # the lockstep batch waits for its slowest member: ~1/balance x the mean
    per_iter = t_grad * steps_per_iter / gauss_res["balance_mean_over_max"]
    iters = int(ARGS.marginal_budget_s / 2 / max(per_iter, 1e-9))
    full = cfg.num_warmup + cfg.num_samples
    if iters >= full:
        cfg_m, reduced = cfg, None
    else:
        w = max(20, iters // 2)
        cfg_m = cfg._replace(num_warmup=w, num_samples=max(20, iters - w))
        reduced = (f"probe: {t_grad:.3f}s per batched gradient at S={S_m}; ran warm-up {cfg_m.num_warmup} + "
                   f"{cfg_m.num_samples} draws to stay within --marginal-budget-s={ARGS.marginal_budget_s}")
    fit, r = time_engine(model, sub, th, cfg_m._replace(chain_method=mode), 1)
    lockstep_steps = float(np.max(fit.n_leapfrog))
    per_step = r["wall_seconds_median"] / lockstep_steps
    r.update({
        "replicates": S_m,
        "num_warmup": cfg_m.num_warmup,
        "num_samples": cfg_m.num_samples,
        "reduced_configuration": reduced,
        "batched_gradient_seconds_probe": t_grad,
        "measured_seconds_per_leapfrog_step": per_step,
        "extrapolated_seconds_per_fit": per_step * steps_per_fit_gauss / gauss_res["balance_mean_over_max"] / S_m,
        "extrapolation_note": "(wall / lockstep steps of this run) x (Gaussian run's leapfrog steps per fit / "
                              "its balance) / replicates in the batch; SBC numbers below are for the reduced run",
    })
    return r


def _min_bulk_ess(samples: dict, failed) -> np.ndarray:
    """Per replicate: the smaller bulk ESS of the two noise levels (diagnostics.rhat_ess, ArviZ)."""
    return np.min([rhat_ess(np.asarray(samples[p]), skip=failed)[1] for p in PARAMS], axis=0)


def run_target_ess(model, a):
    """(d): fixed default run length vs NUTSConfig(target_ess=L), same data, 2 chains."""
    data, _ = simulate(jax.random.PRNGKey(77), a.ess_replicates, a.obs, a.inputs)
    S = a.ess_replicates
    runs = {
        "fixed_default": NUTSConfig(num_warmup=a.warmup, num_samples=a.samples, num_chains=2,
                                    chain_method="vectorized"),
        "target_ess": NUTSConfig(num_warmup=a.warmup, num_samples=a.pilot, num_chains=2, target_ess=a.target_ess,
                                 max_samples=a.samples, chain_method="vectorized"),
    }
    out = {"replicates": S, "N": a.obs, "M": a.inputs, "target_ess": a.target_ess, "pilot": a.pilot,
           "max_samples": a.samples, "dtype": "float32", "runs": {}}
    for name, cfg in runs.items():
        walls = []
        for r in range(max(1, a.repeats)):
            fit = fit_batch(jax.random.PRNGKey(100 + r), model, data, cfg)
            walls.append(fit.wall_time)
        ess = _min_bulk_ess(fit.samples, fit.failed)
        n = np.asarray(fit.num_samples)
        out["runs"][name] = {
            "config": {k: getattr(cfg, k) for k in ("num_warmup", "num_samples", "num_chains", "target_ess",
                                                      "max_samples")},
            "wall_seconds_median": float(np.median(walls)), "wall_seconds_all": walls,
            "fits_per_second": S / float(np.median(walls)),
            "leapfrog_steps_per_fit_mean": float(np.asarray(fit.n_leapfrog).sum(1).mean()),
            "post_warmup_iterations_per_chain": {"mean": float(n.mean()), "min": int(n.min()), "max": int(n.max())},
            "draws_returned_per_chain": int(np.asarray(fit.samples[PARAMS[0]]).shape[2]),
            "min_bulk_ess_of_returned_draws": {"median": float(np.nanmedian(ess)), "min": float(np.nanmin(ess)),
                                               "fraction_ge_target": float(np.mean(ess >= a.target_ess))},
            "failed": int(fit.failed.sum()),
        }
    f, t = out["runs"]["fixed_default"], out["runs"]["target_ess"]
    out["summary"] = {"speedup_fits_per_second": t["fits_per_second"] / f["fits_per_second"],
                      "leapfrog_saving": 1 - t["leapfrog_steps_per_fit_mean"] / f["leapfrog_steps_per_fit_mean"],
                      "median_ess_fixed": f["min_bulk_ess_of_returned_draws"]["median"],
                      "median_ess_target": t["min_bulk_ess_of_returned_draws"]["median"],
                      "fraction_ge_target": t["min_bulk_ess_of_returned_draws"]["fraction_ge_target"]}
    return out


def run_progress_overhead(model, data, cfg, repeats):
    """(e): wall time with and without the in-loop progress callback; the draws must be equal."""
    calls = []
    res = {}
    fits = {}
    for name, cb in (("without", None), ("with", calls.append)):
        walls = []
        for r in range(max(2, repeats)):
            fits[name] = fit_batch(jax.random.PRNGKey(5), model, data, cfg, progress=cb)
            walls.append(fits[name].wall_time)
        res[name + "_wall_seconds_median"] = float(np.median(walls))
    res["overhead_fraction"] = res["with_wall_seconds_median"] / res["without_wall_seconds_median"] - 1
    res["callbacks_per_run"] = len(calls) / max(2, repeats)
    res["draws_identical"] = bool(all(np.array_equal(fits["with"].samples[p], fits["without"].samples[p],
                                                     equal_nan=True) for p in PARAMS))
    res["chain_method"] = cfg.chain_method
    return res


def main():
    a = ARGS
    info = {"machine": machine(), "date": _dt.date.today().isoformat()}
    cfg = NUTSConfig(num_warmup=a.warmup, num_samples=a.samples, num_chains=1, target_accept_prob=0.8)
    info["config"] = {
        "model": "gaussian (moment-matched), strong prior", "M": a.inputs, "N": a.obs, "S": a.replicates,
        "chains": 1, "num_warmup": a.warmup, "num_samples": a.samples, "target_accept_prob": 0.8,
        "dtype": "float32", "engine_repeats": a.repeats,
    }
    from noisydot_sbc.models import get_model

    gauss = get_model("gaussian", STRONG)
    data, theta = simulate(jax.random.PRNGKey(2026), a.replicates, a.obs, a.inputs)
    print(f"machine: {info['machine']['cpu_model']} x{info['machine']['cpu_count']}, devices {info['machine']['devices']}, "
          f"load {info['machine']['load_average_at_start']}", flush=True)

    if a.only == "run-length":
        return _finish(info, a, gauss, data, cfg._replace(chain_method="vectorized"))

    # (b) the engine, every mode
    modes = ["sequential", "vectorized"] + (["parallel"] if len(jax.devices()) > 1 else [])
    res_b = {}
    fits = {}
    for m in modes:
        fit, r = time_engine(gauss, data, theta, cfg._replace(chain_method=m), a.repeats)
        res_b[m], fits[m] = r, fit
        print(f"(b) engine {m}: {r['seconds_per_fit'] * 1e3:.2f} ms/fit, compile {r['compile_seconds']:.1f}s, "
              f"coverage {[r['sbc'][p]['coverage_90'] for p in PARAMS]}", flush=True)
    auto_method, auto_why = resolve_chain_method("auto", a.replicates)
    best = min(res_b, key=lambda k: res_b[k]["seconds_per_fit"])
    info["engine_gaussian"] = {"modes": res_b, "best_mode": best, "auto_picks": auto_method, "auto_reason": auto_why}

    # (a) the NumPyro loop
    res_a = time_numpyro_loop(gauss, data, theta, min(a.numpyro_fits, a.replicates), cfg)
    info["numpyro_mcmc_loop"] = res_a
    print(f"(a) numpyro MCMC loop: {res_a['seconds_per_fit_median'] * 1e3:.1f} ms/fit", flush=True)

    # lower limit: total leapfrog steps x one batched gradient
    t_grad = batched_gradient_seconds(gauss, data)
    fit_best = fits[best]
    total_steps = float(np.sum(fit_best.n_leapfrog))
    floor_total = total_steps * t_grad / a.replicates  # batched gradient amortised over S replicates
    info["lower_limit"] = {
        "batched_gradient_seconds_at_batch_S": t_grad,
        "gradient_seconds_per_replicate": t_grad / a.replicates,
        "total_leapfrog_steps_all_replicates": total_steps,
        "floor_seconds_per_fit": floor_total / a.replicates,
        "engine_seconds_per_fit": res_b[best]["seconds_per_fit"],
        "engine_over_floor": res_b[best]["seconds_per_fit"] / (floor_total / a.replicates),
        "note": "floor = (sum over replicates of leapfrog steps, warm-up included) x (time of one value-and-"
                "gradient of the potential for all S replicates at once, measured in a compiled loop) / S; "
                "it ignores the NUTS bookkeeping and the wait for the replicate with the most steps",
    }
    print(f"floor {info['lower_limit']['floor_seconds_per_fit'] * 1e3:.2f} ms/fit; engine is "
          f"{info['lower_limit']['engine_over_floor']:.1f}x the floor", flush=True)

    info["speedup_vs_sequential_numpyro"] = res_b[best]["fits_per_second"] / res_a["fits_per_second"]
    info["speedup_each_mode_vs_sequential_numpyro"] = {
        m: r["fits_per_second"] / res_a["fits_per_second"] for m, r in res_b.items()
    }
    info["speedup_vs_perf_md_numpyro_loop_0.59s"] = 0.59 / res_b[best]["seconds_per_fit"]
    print(f"speedup (b)/(a) = {info['speedup_vs_sequential_numpyro']:.1f}x", flush=True)

    # (c) the marginal model
    if a.skip_marginal:
        info["engine_marginal"] = {"skipped": "--skip-marginal"}
    else:
        try:
            info["engine_marginal"] = run_marginal(get_model("marginal", STRONG), data, theta, cfg, best,
                                                   total_steps / a.replicates, res_b[best])
            r = info["engine_marginal"]
            print(f"(c) marginal: {r['measured_seconds_per_leapfrog_step'] * 1e3:.1f} ms per lockstep step at "
                  f"S={r['replicates']}; extrapolated {r['extrapolated_seconds_per_fit']:.1f} s/fit", flush=True)
        except Exception as err:  # the marginal model is new; record why it did not run
            info["engine_marginal"] = {"error": f"{type(err).__name__}: {err}"}
            print(f"(c) marginal failed: {err}", flush=True)

    return _finish(info, a, gauss, data, cfg._replace(chain_method=best))


def _finish(info, a, gauss, data, cfg):
    # (d) run length from L, and (e) the progress callback's cost
    info["target_ess"] = run_target_ess(gauss, a)
    print(f"(d) target_ess: {json.dumps(info['target_ess']['summary'])}", flush=True)
    info["progress_overhead"] = run_progress_overhead(gauss, data, cfg, a.repeats)
    print(f"(e) progress: {json.dumps(info['progress_overhead'])}", flush=True)

    info["machine"]["load_average_at_end"] = list(os.getloadavg())
    suffix = f"_{a.only}" if a.only else ""
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"sbc_throughput_{info['date']}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
