"""Cost of the study's exact-NUTS cells (latent and marginal model): seconds per fit per design x prior x N.

Each probe composes the study's own config (conf/design/study_*.yaml, model, prior, sampler=nuts
with the overrides given here: ``sampler.target_ess`` ...), validates it (``config.validate_config``)
and runs the real SBC path of one chunk: ``tasks.sbc.make_setup`` -> ``tasks.sbc.simulate_and_fit``
(simulate_replicates, then the NUTS method's ``fit`` on the whole chunk, vectorised as in a study
job). A probe runs in its own process under a wall-clock limit (``--timeout``); a probe that runs
past it is itself the answer ("too slow") and records how far it got (the in-loop progress of the
fit, fraction of iterations done) and the compile time when the fit had started.

Recorded per probe: compile seconds, fit seconds (compiled run, host ESS step included), seconds
per fit (fit seconds / replicates: what one replicate costs in a vectorised chunk of this size),
leapfrog steps per fit, post-warm-up iterations per chain (target_ess sets them), the minimum bulk
ESS of the returned draws, divergent-fit fraction, failed fits, and the load average before and
after (the machine is shared: read the ratios between probes, not the absolute rates).

    python benchmarks/study_cell_cost.py                         # every probe of the default grid
    python benchmarks/study_cell_cost.py --models marginal --priors weak --designs study_m1 --obs 50
    python benchmarks/study_cell_cost.py --smoke --out /tmp/smoke.json

Writes benchmarks/results/study_cell_cost.json (``--out`` overrides), rewritten after every probe
(probes already in the file with the same key are kept unless ``--rerun``).
Public API only (noisydot_sbc.config, .tasks.sbc, .tasks.common, .diagnostics, .models).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine  # noqa: E402  (benchmarks/machine_info.py)
DESIGNS = ("study_m1", "study_m2", "study_m8", "study_m8_readout", "study_degenerate")


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["marginal", "latent"])
    p.add_argument("--priors", nargs="+", default=["strong", "weak"])
    p.add_argument("--designs", nargs="+", default=list(DESIGNS))
    p.add_argument("--obs", nargs="+", type=int, default=[50, 200], help="N per probe")
    p.add_argument("--replicates", type=int, default=8, help="replicates per probe (one vectorised chunk)")
    p.add_argument("--warmup", type=int, default=300, help="sampler.num_warmup (the study's nuts.yaml)")
    p.add_argument("--pilot", type=int, default=200, help="sampler.num_samples (the pilot with target_ess)")
    p.add_argument("--target-ess", type=int, default=200, help="sampler.target_ess (0: fixed run length)")
    p.add_argument("--max-samples", type=int, default=1000, help="sampler.max_samples")
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--timeout", type=float, default=180.0, help="wall-clock limit of one probe (s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=["fit", "gradient"], default="fit",
                   help="fit: real SBC chunks (subprocess per probe, --timeout); gradient: one process, the cost "
                        "of one value-and-gradient of the potential at the true parameters (a leapfrog step)")
    p.add_argument("--compilation-cache", type=str, default=None,
                   help="JAX persistent compilation cache folder shared by the probes (compile_seconds is then "
                        "the cache load for a probe whose program was compiled before)")
    p.add_argument("--rerun", action="store_true", help="rerun probes already in the output file")
    p.add_argument("--smoke", action="store_true", help="one tiny probe: checks the script runs")
    p.add_argument("--out", type=str, default=str(ROOT / "benchmarks" / "results" / "study_cell_cost.json"))
    p.add_argument("--probe", type=str, default=None, help=argparse.SUPPRESS)  # child mode: JSON of one probe
    p.add_argument("--progress-file", type=str, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.smoke:
        a.models, a.priors, a.designs, a.obs = ["marginal"], ["strong"], ["study_m2"], [20]
        a.replicates, a.warmup, a.pilot, a.target_ess, a.max_samples = 2, 30, 30, 20, 60
    return a


def overrides(spec: dict) -> list:
    """Hydra overrides of one probe: the study design, model, prior and the sampler settings."""
    ov = [f"model={spec['model']}", f"prior={spec['prior']}", f"design={spec['design']}", "sampler=nuts",
          f"design.n_obs={spec['n_obs']}", f"sampler.num_warmup={spec['num_warmup']}",
          f"sampler.num_samples={spec['num_samples']}", f"sampler.num_chains={spec['num_chains']}",
          f"sbc.num_replicates={spec['replicates']}", f"sbc.chunk_size={spec['replicates']}",
          f"sbc.num_ranks={min(199, spec['num_samples'])}", f"seed={spec['seed']}"]
    if spec["target_ess"]:
        ov += [f"sampler.target_ess={spec['target_ess']}", f"sampler.max_samples={spec['max_samples']}"]
    return ov


def run_probe(spec: dict, progress_file: str | None) -> dict:
    """Child process: compose, validate, simulate and fit one chunk; the probe's figures."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    from hydra import compose, initialize_config_dir

    from noisydot_sbc import config  # registers the schemas
    from noisydot_sbc.tasks import common

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides(spec))
    config.validate_config(cfg)
    common.configure_platform(cfg)

    import numpy as np

    from noisydot_sbc.diagnostics import rhat_ess
    from noisydot_sbc.models import PARAMS
    from noisydot_sbc.tasks.sbc import make_setup, simulate_and_fit

    t0 = time.perf_counter()

    def progress(frac):
        if progress_file:
            Path(progress_file).write_text(json.dumps({"done_fraction": float(frac),
                                                       "seconds": time.perf_counter() - t0}))

    setup = make_setup(cfg)
    chunk = simulate_and_fit(setup, 0, np.arange(spec["replicates"]), progress=progress)
    post = chunk.posterior
    failed = np.asarray(chunk.failures.failed)
    S = len(failed)
    ess = np.stack([rhat_ess(np.asarray(post.samples[p]), skip=failed)[1] for p in PARAMS]).min(axis=0)
    rhat = np.stack([rhat_ess(np.asarray(post.samples[p]), skip=failed)[0] for p in PARAMS]).max(axis=0)
    fs = {k: np.asarray(v) for k, v in (post.fit_stats or {}).items()}
    div = np.asarray(post.sample_stats.get("diverging", np.zeros((S, 1, 1), bool)))
    ok = ~failed

    def _stat(a, fn):
        a = np.asarray(a, float)[ok]
        a = a[np.isfinite(a)]
        return float(fn(a)) if a.size else None

    return {
        "status": "done",
        "replicates": int(S),
        "failed": int(failed.sum()),
        "compile_seconds": float(post.compile_time),
        "fit_seconds": float(post.wall_time),
        "seconds_per_fit": float(post.wall_time) / S,
        "process_seconds": time.perf_counter() - t0,
        "chain_method": str((post.info or {}).get("chain_method", "")),
        "leapfrog_per_fit_mean": _stat(fs["n_leapfrog"], np.mean) if "n_leapfrog" in fs else None,
        "leapfrog_per_fit_max": _stat(fs["n_leapfrog"], np.max) if "n_leapfrog" in fs else None,
        "iterations_per_chain_mean": _stat(fs["num_samples"], np.mean) if "num_samples" in fs else None,
        "iterations_per_chain_max": _stat(fs["num_samples"], np.max) if "num_samples" in fs else None,
        "min_bulk_ess": {"median": _stat(ess, np.median), "min": _stat(ess, np.min)},
        "max_r_hat": {"median": _stat(rhat, np.median), "max": _stat(rhat, np.max)},
        "divergent_fit_fraction": float(div.reshape(S, -1).any(axis=1)[ok].mean()) if ok.any() else None,
        "truth": {p: np.asarray(chunk.truth[p]).round(4).tolist() for p in PARAMS},
    }


def gradient_probes(a, doc, out_path):
    """In one process: the cost of one value-and-gradient of the model's potential (the work of
    one leapfrog step) at each replicate's true parameters, per replicate (batch of one, so the
    spread across replicates shows) and for the whole probe batched (vmap: a vectorised chunk
    waits for its slowest replicate). Seconds per fit ~ leapfrog steps per fit x this cost."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    from hydra import compose, initialize_config_dir

    from noisydot_sbc import config
    from noisydot_sbc.tasks import common

    import jax
    import jax.numpy as jnp
    import numpy as np

    from noisydot_sbc.inference.potential import build_potential
    from noisydot_sbc.models import PARAMS
    from noisydot_sbc.simulate import simulate_replicates
    from noisydot_sbc.tasks.sbc import make_setup

    jax.config.update("jax_enable_x64", True)

    def timed(fn, *args, repeats=3):
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            out.append(time.perf_counter() - t)
        return float(np.median(out))

    for spec in specs(a):
        key = "gradient-" + _key(spec)
        if key in doc["probes"] and not a.rerun:
            continue
        load0, t0 = os.getloadavg(), time.time()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides(spec))
        config.validate_config(cfg)
        setup = make_setup(cfg)
        data, truth = simulate_replicates(setup.root_key, np.arange(a.replicates), cfg.design,
                                          setup.prior, jnp.float64)
        pot = build_potential(setup.model, data)
        zs = []
        for s in range(a.replicates):
            z = np.array(pot.z_center)
            for p in PARAMS:
                idx, _, tr = pot.keep[p]
                z[idx] = np.asarray(tr.inv(jnp.abs(truth[p][s])))
            zs.append(z)
        zs = jnp.asarray(np.stack(zs))
        prepared = jax.vmap(pot.prepare)(data)
        one = jax.jit(pot.value_and_grad)
        batched = jax.jit(jax.vmap(pot.value_and_grad))
        tc = time.perf_counter()
        jax.block_until_ready(one(zs[0], jax.tree_util.tree_map(lambda v: v[0], prepared)))
        compile_one = time.perf_counter() - tc
        per_rep = [timed(one, zs[s], jax.tree_util.tree_map(lambda v, s=s: v[s], prepared))
                   for s in range(a.replicates)]
        tc = time.perf_counter()
        val, _ = jax.block_until_ready(batched(zs, prepared))
        compile_batched = time.perf_counter() - tc
        t_batch = timed(batched, zs, prepared)
        rec = {"status": "done", "kind": "gradient", "replicates": a.replicates,
               "compile_seconds_one": compile_one, "compile_seconds_batched": compile_batched,
               "grad_seconds_per_replicate": per_rep,
               "grad_seconds_per_replicate_median": float(np.median(per_rep)),
               "grad_seconds_per_replicate_max": float(np.max(per_rep)),
               "grad_seconds_batched": t_batch, "grad_seconds_batched_per_replicate": t_batch / a.replicates,
               "potential_finite": bool(np.all(np.isfinite(np.asarray(val)))),
               "dim": int(pot.dim),
               "truth": {p: np.asarray(truth[p]).round(4).tolist() for p in PARAMS},
               "wall_seconds": time.time() - t0, "load_average_before": [round(x, 2) for x in load0],
               "load_average_after": [round(x, 2) for x in os.getloadavg()], "spec": spec,
               "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0))}
        doc["probes"][key] = rec
        print(key, {k: rec[k] for k in ("grad_seconds_per_replicate_median", "grad_seconds_per_replicate_max",
                                        "grad_seconds_batched_per_replicate", "compile_seconds_batched")},
              flush=True)
        out_path.write_text(json.dumps(doc, indent=1))


def specs(a):
    """The probe specs of the command line: every model x prior x design x N."""
    for model in a.models:
        for prior in a.priors:
            for design in a.designs:
                for n_obs in a.obs:
                    yield dict(model=model, prior=prior, design=design, n_obs=n_obs, replicates=a.replicates,
                               num_warmup=a.warmup, num_samples=a.pilot, num_chains=a.chains,
                               target_ess=a.target_ess, max_samples=a.max_samples, seed=a.seed)


def _key(spec):
    return f"{spec['model']}-{spec['prior']}-{spec['design']}-N{spec['n_obs']}"


def main(argv=None):
    a = _parse(argv)
    if a.probe:
        out = run_probe(json.loads(a.probe), a.progress_file)
        print("PROBE_RESULT " + json.dumps(out), flush=True)
        return
    out_path = Path(a.out)
    doc = json.loads(out_path.read_text()) if out_path.exists() and not a.smoke else {}
    doc.setdefault("probes", {})
    doc["machine"] = machine()
    doc["settings"] = {"replicates_per_probe": a.replicates, "num_warmup": a.warmup, "num_samples(pilot)": a.pilot,
                       "target_ess": a.target_ess or None, "max_samples": a.max_samples if a.target_ess else None,
                       "num_chains": a.chains, "timeout_seconds": a.timeout, "precision": "float64",
                       "compilation_cache": bool(a.compilation_cache),
                       "path": "config.validate_config -> tasks.sbc.make_setup -> tasks.sbc.simulate_and_fit"}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if a.mode == "gradient":
        return gradient_probes(a, doc, out_path)
    for spec in specs(a):
        key = _key(spec)
        if key in doc["probes"] and not a.rerun:
            continue
        prog = Path(f"/tmp/study_cell_cost_{os.getpid()}.progress")
        prog.unlink(missing_ok=True)
        load0 = os.getloadavg()
        t0 = time.time()
        cmd = [sys.executable, __file__, "--probe", json.dumps(spec), "--progress-file", str(prog)]
        env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
        if a.compilation_cache:
            env.update(JAX_COMPILATION_CACHE_DIR=a.compilation_cache,
                       JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env, cwd=ROOT)
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith("PROBE_RESULT ")]
            if lines:
                rec = json.loads(lines[-1][len("PROBE_RESULT "):])
            else:
                rec = {"status": "error", "error": (res.stderr or res.stdout)[-800:]}
        except subprocess.TimeoutExpired:
            rec = {"status": "too slow", "timeout_seconds": a.timeout}
            if prog.exists():
                rec["last_progress"] = json.loads(prog.read_text())
        rec["wall_seconds"] = time.time() - t0
        rec["load_average_before"] = [round(x, 2) for x in load0]
        rec["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        rec["spec"] = spec
        rec["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0))
        prog.unlink(missing_ok=True)
        doc["probes"][key] = rec
        print(key, rec["status"], {k: rec.get(k) for k in ("seconds_per_fit", "compile_seconds",
                                                            "iterations_per_chain_mean", "wall_seconds")},
              flush=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
