"""The pipeline: the only module that imports everything. ``run.py`` hands it the Hydra config.

Tasks (``task.name``):
- ``sbc``: simulation-based calibration of one model under one prior (chunked, resumable).
- ``fit``: fit a model to measured data (x, w, y) from a netCDF or CSV file.
- ``degeneracy``: the identifiability map over design features (expected Fisher information).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- config helpers
def _to_container(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg


def _config_yaml(cfg) -> str:
    from omegaconf import OmegaConf

    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    return OmegaConf.to_yaml(cfg, resolve=True)


def _output_dir(cfg) -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.output_dir)
    except ImportError:  # pragma: no cover
        pass
    out = cfg.get("output_dir") if hasattr(cfg, "get") else None
    if not out:
        raise ValueError("output_dir must be set when the pipeline runs outside Hydra")
    return Path(out)


def _configure_platform(cfg):
    """Precision and host devices must be set before JAX creates its first array."""
    import jax

    precision = str(cfg.get("precision", "float64"))
    if precision not in ("float64", "float32"):
        raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")
    jax.config.update("jax_enable_x64", precision == "float64")
    host_devices = cfg.sampler.get("host_devices") if "sampler" in cfg else None
    if host_devices:
        from .engine import configure_host_devices

        configure_host_devices(int(host_devices))


def run(cfg):
    """Run the task named in ``cfg.task.name``; returns a small dict of headline figures."""
    _configure_platform(cfg)
    task = cfg.task.name
    if task == "sbc":
        return run_sbc(cfg)
    if task == "fit":
        return run_fit(cfg)
    if task == "degeneracy":
        return run_degeneracy(cfg)
    raise ValueError(f"task.name must be 'sbc', 'fit' or 'degeneracy', got {task!r}")


# ----------------------------------------------------------------------------- shared pieces
PARAMS = ("x_noise_lvl", "w_noise_lvl")
QUANTITIES = ("x_noise_lvl", "w_noise_lvl", "log_lik", "w_over_x")


def _prior_variance(scale_prior) -> float:
    """Variance of a one-dimensional prior on a noise level (for posterior contraction)."""
    from .identifiability import prior_variances

    return float(prior_variances(scale_prior)[0])


def _nuts_config(cfg):
    from .engine import NUTSConfig

    s = cfg.sampler
    return NUTSConfig(
        num_warmup=int(s.num_warmup),
        num_samples=int(s.num_samples),
        num_chains=int(s.num_chains),
        thinning=int(s.thinning),
        target_accept_prob=float(s.target_accept_prob),
        max_tree_depth=int(s.max_tree_depth),
        dense_mass=bool(s.dense_mass),
        chain_method=str(s.chain_method),
    )


def _model(cfg, prior, y_noise):
    from .models import get_model

    return get_model(str(cfg.model.name), prior=prior, y_noise=float(y_noise),
                     shared_w_noise=bool(cfg.design.get("shared_w_noise", False)))


def _log_lik_fn(y_noise):
    """f(θ, y) = Σ_n log p_exact(y_n | θ): the log-likelihood test quantity (Modrák et al. 2023).

    The exact marginal log-likelihood is used for every model, so the ranks of all three models
    test the same function of (θ, y); any such function has uniform ranks under a correct posterior.
    """
    import jax
    import jax.numpy as jnp

    from .likelihoods import noisydot_logpdf

    def one(x, w, y, sx, sw):
        return jnp.sum(noisydot_logpdf(y, x, w, jnp.abs(sx), jnp.abs(sw), y_noise))

    per_draw = jax.vmap(one, in_axes=(None, None, None, 0, 0))  # over draws
    return jax.jit(jax.vmap(per_draw, in_axes=(0, 0, 0, 0, 0)))  # over replicates


def _simulate_replicates(root_key, replicate_ids, design_cfg, prior, dtype):
    """Truth from the prior, design, and y from the TRUE process, one per replicate id (vectorized)."""
    import jax
    import jax.numpy as jnp

    from .simulate import _simulate_y, make_design

    fixed_design_key = jax.random.fold_in(root_key, 2**30)

    def one(r):
        k = jax.random.fold_in(root_key, r)
        kd, kt, ky = jax.random.split(k, 3)
        if not design_cfg.get("new_design_per_replicate", True):
            kd = fixed_design_key
        d = make_design(
            kd, int(design_cfg.n_obs), int(design_cfg.n_inputs), x_dist=str(design_cfg.x_dist),
            x_scale=float(design_cfg.x_scale), x_spread=float(design_cfg.x_spread),
            w_dist=str(design_cfg.w_dist), w_scale=float(design_cfg.w_scale), dtype=dtype,
        )
        truth = prior.sample(kt)
        sx, sw = truth["x_noise_lvl"], truth["w_noise_lvl"]
        # the naive (negative-control) prior can draw σ < 0; the device noise is |σ|
        y = _simulate_y(ky, d.x, d.w, jnp.abs(sx), jnp.abs(sw), float(design_cfg.y_noise),
                        bool(design_cfg.get("shared_w_noise", False)))
        return d.x, d.w, y, sx.astype(dtype), sw.astype(dtype)

    x, w, y, sx, sw = jax.jit(jax.vmap(one))(jnp.asarray(replicate_ids))
    return {"x": x, "w": w, "y": y}, {"x_noise_lvl": sx, "w_noise_lvl": sw}


def _config_fingerprint(cfg) -> str:
    """Hash of everything that changes SBC results (not the progress bar or Hydra's own settings)."""
    c = _to_container(cfg)
    c = {k: v for k, v in c.items() if k not in ("hydra", "progress", "output_dir")}
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_resume(chunks_dir: Path, cfg) -> None:
    chunks_dir.mkdir(parents=True, exist_ok=True)
    stamp = chunks_dir / "config_fingerprint.txt"
    fp = _config_fingerprint(cfg)
    if stamp.exists():
        old = stamp.read_text().strip()
        if old != fp:
            raise ValueError(
                f"{chunks_dir} holds chunks of a different configuration (fingerprint {old}, now {fp}); "
                "choose another hydra.run.dir or delete the folder to start afresh"
            )
    else:
        stamp.write_text(fp + "\n")


# ----------------------------------------------------------------------------- SBC
def _sbc_chunk(cfg, chunk_index, replicate_ids, model, prior, nuts, log_lik, root_key, dtype):
    """Simulate, fit and rank one chunk of replicates; returns the chunk Dataset."""
    import jax

    from . import diagnostics, results, sbc
    from .engine import fit_batch

    n_real = len(replicate_ids)
    chunk = int(cfg.sbc.chunk_size)
    # pad the last chunk to the common shape so the compiled sampler is reused (padding dropped)
    padded = np.concatenate([replicate_ids, np.full(chunk - n_real, replicate_ids[-1])]) if n_real < chunk else replicate_ids
    data, truth = _simulate_replicates(root_key, padded, cfg.design, prior, dtype)
    fit_key = jax.random.fold_in(jax.random.fold_in(root_key, 2**30 + 1), chunk_index)
    t0 = time.perf_counter()
    fit = fit_batch(fit_key, model, data, nuts)
    elapsed = time.perf_counter() - t0
    keep = slice(0, n_real)
    data = {k: np.asarray(v)[keep] for k, v in data.items()}
    truth = {k: np.asarray(v)[keep] for k, v in truth.items()}
    samples = {p: np.asarray(fit.samples[p])[keep] for p in PARAMS}
    stats = {k: np.asarray(v)[keep] for k, v in fit.sample_stats.items()}
    failed = np.asarray(fit.failed)[keep].astype(bool)
    errors = [str(e) for e in list(fit.error)[:n_real]]

    L = int(cfg.sbc.num_ranks)
    thin = {p: sbc.thin_draws(samples[p], L) for p in PARAMS}  # (S, L)
    draws_q = dict(thin)
    draws_q["w_over_x"] = np.abs(thin["w_noise_lvl"]) / np.abs(thin["x_noise_lvl"])
    true_q = dict(truth)
    true_q["w_over_x"] = np.abs(truth["w_noise_lvl"]) / np.abs(truth["x_noise_lvl"])
    safe = lambda a: np.where(np.isfinite(a), a, 1.0)  # failed fits: placeholder values, flagged below
    draws_q["log_lik"] = np.asarray(
        log_lik(data["x"], data["w"], data["y"], safe(thin["x_noise_lvl"]), safe(thin["w_noise_lvl"]))
    )
    true_q["log_lik"] = np.asarray(
        log_lik(data["x"], data["w"], data["y"], truth["x_noise_lvl"][:, None], truth["w_noise_lvl"][:, None])
    )[:, 0]
    for q in QUANTITIES:  # a non-finite quantity marks the replicate failed with its reason
        bad = ~(np.isfinite(true_q[q]) & np.isfinite(draws_q[q]).all(axis=1)) & ~failed
        for i in np.flatnonzero(bad):
            errors[i] = f"non-finite test quantity {q}"
        failed |= bad
    for q in QUANTITIES:
        draws_q[q] = np.where(failed[:, None], 0.0, draws_q[q])
        true_q[q] = np.where(failed, 0.0, true_q[q])
    rng = np.random.default_rng([int(cfg.seed), chunk_index])
    names, ranks = sbc.rank_quantities(rng, {q: true_q[q] for q in QUANTITIES}, {q: draws_q[q] for q in QUANTITIES})
    post_mean = np.stack([draws_q[q].mean(axis=1) for q in names], axis=1)
    post_sd = np.stack([draws_q[q].std(axis=1, ddof=1) for q in names], axis=1)
    z, contraction = [], []
    for p in PARAMS:
        zp, cp = sbc.zscore_contraction(true_q[p], draws_q[p], _prior_variance(getattr(prior, p)))
        z.append(zp)
        contraction.append(cp)
    diag = diagnostics.compute_diagnostics(
        {p: np.where(failed[:, None, None], 0.0, samples[p]) for p in PARAMS},
        {k: np.where(failed.reshape((-1,) + (1,) * (v.ndim - 1)), 0, v) for k, v in stats.items()},
        max_tree_depth=nuts.max_tree_depth, failed=failed, params=list(PARAMS),
    )
    # thinned draws per chain for storage: (S, chain, L // chain, P)
    n_chain = samples[PARAMS[0]].shape[1]
    per_chain = max(1, L // n_chain)
    idx = np.linspace(0, samples[PARAMS[0]].shape[2] - 1, per_chain).round().astype(int)
    stored = np.stack([samples[p][:, :, idx] for p in PARAMS], axis=-1)
    stored = np.where(failed[:, None, None, None], np.nan, stored)
    arrays = {
        "true": np.stack([true_q[q] for q in names], axis=1),
        "rank": ranks,
        "posterior_mean": np.where(failed[:, None], np.nan, post_mean),
        "posterior_sd": np.where(failed[:, None], np.nan, post_sd),
        "z_score": np.where(failed[:, None], np.nan, np.stack(z, axis=1)),
        "contraction": np.where(failed[:, None], np.nan, np.stack(contraction, axis=1)),
        "draws": stored,
        "failed": failed,
        "error": np.array(errors, dtype=object),
        "wall_time_share": diagnostics.wall_time_share(diag["n_steps"], elapsed),
    }
    for k in ("diverging", "tree_depth_hits", "bfmi", "r_hat", "ess_bulk", "ess_tail", "step_size",
              "mean_tree_depth", "n_steps"):
        arrays[k] = diag[k]
    arrays["true_params_log_lik_gap"] = (("replicate",), true_q["log_lik"] - np.median(draws_q["log_lik"], axis=1))
    arrays.update(_degeneracy_vars(samples, prior, truth, failed))
    if int(cfg.sbc.get("fisher_sims", 0)) > 0:
        arrays.update(_fisher_per_replicate(cfg, data, truth, root_key, chunk_index))
    attrs = {
        "num_ranks": L,
        "config_yaml": _config_yaml(cfg),
        "seed": int(cfg.seed),
        "model": str(cfg.model.name),
        "prior": str(prior.name),
        "chain_method": str(fit.chain_method),
        "compile_time": float(fit.compile_time),
    }
    return results.build_sbc_dataset(
        arrays, coords={"quantity": list(names), "parameter": list(PARAMS), "replicate": np.asarray(replicate_ids)},
        attrs=attrs,
    )


def _degeneracy_vars(samples, prior, truth, failed):
    """Posterior degeneracy diagnostics per replicate (correlation of the logs, flags)."""
    from .identifiability import posterior_degeneracy_batch

    safe = {p: np.where(failed[:, None, None], 1.0, samples[p]) for p in PARAMS}
    res = posterior_degeneracy_batch(safe, prior, true={p: np.abs(truth[p]) for p in PARAMS})
    nan_if_failed = lambda a: np.where(failed, np.nan, np.asarray(a, dtype=float))
    return {
        "corr_log": (("replicate",), nan_if_failed(res["corr_log"])),
        "multimodal": (("replicate",), np.asarray(res["multimodal"], dtype=bool) & ~failed),
        "prior_dominated": (("replicate", "parameter"),
                            np.stack([np.asarray(res["prior_dominated"][p], dtype=bool) & ~failed for p in PARAMS], 1)),
        "contraction_log": (("replicate", "parameter"),
                            np.stack([nan_if_failed(res["contraction_log"][p]) for p in PARAMS], 1)),
    }


def _fisher_per_replicate(cfg, data, truth, root_key, chunk_index):
    """Expected Fisher information of (log σ_x, log σ_w) at the true values of each replicate."""
    import jax

    from .identifiability import expected_fisher_information

    n_sims = int(cfg.sbc.fisher_sims)
    cond, weak = [], []
    for i in range(data["y"].shape[0]):
        k = jax.random.fold_in(jax.random.fold_in(root_key, 2**30 + 2), chunk_index * 100_000 + i)
        res = expected_fisher_information(
            k, data["x"][i], data["w"][i], abs(float(truth["x_noise_lvl"][i])), abs(float(truth["w_noise_lvl"][i])),
            y_noise=float(cfg.design.y_noise), num_sims=n_sims,
        )
        cond.append(float(res.condition_number))
        weak.append(np.asarray(res.ridge_direction, dtype=float))
    return {
        "fisher_condition_number": (("replicate",), np.asarray(cond)),
        "fisher_weakest_direction": (("replicate", "parameter"), np.asarray(weak)),
    }


def run_sbc(cfg):
    """SBC of ``cfg.model`` under ``cfg.prior``; resumable, chunked, writes results.nc and plots."""
    import jax
    import jax.numpy as jnp
    from tqdm.auto import tqdm

    from . import results, sbc
    from .priors import get_prior

    out = _output_dir(cfg)
    chunks_dir = out / "chunks"
    _check_resume(chunks_dir, cfg)
    prior = get_prior(_to_container(cfg.prior))
    model = _model(cfg, prior, cfg.design.y_noise)
    nuts = _nuts_config(cfg)
    S, C = int(cfg.sbc.num_replicates), int(cfg.sbc.chunk_size)
    if S < 1:
        raise ValueError(f"sbc.num_replicates must be >= 1, got {S}")
    if C < 1:
        raise ValueError(f"sbc.chunk_size must be >= 1, got {C}")
    if int(cfg.sbc.num_ranks) > nuts.num_chains * nuts.num_samples // nuts.thinning:
        raise ValueError(
            f"sbc.num_ranks={cfg.sbc.num_ranks} exceeds the posterior draws kept "
            f"({nuts.num_chains} chains x {nuts.num_samples // nuts.thinning} draws)"
        )
    n_chunks = -(-S // C)
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    root_key = jax.random.PRNGKey(int(cfg.seed))
    log_lik = _log_lik_fn(float(cfg.design.y_noise))
    done = results.finished_chunks(chunks_dir)
    todo = [i for i in range(n_chunks) if i not in done]
    if done:
        log.info("resuming: %d of %d chunks already finished in %s", len(done & set(range(n_chunks))), n_chunks, chunks_dir)
    bar = tqdm(total=S, initial=sum(min(C, S - i * C) for i in done if i < n_chunks), unit="fit",
               disable=not bool(cfg.get("progress", True)), desc=f"SBC {cfg.model.name}/{prior.name}")
    for ci in todo:
        ids = np.arange(ci * C, min((ci + 1) * C, S))
        ds_chunk = _sbc_chunk(cfg, ci, ids, model, prior, nuts, log_lik, root_key, dtype)
        results.write_chunk(ds_chunk, chunks_dir, ci)
        bar.update(len(ids))
    bar.close()
    ds = results.merge_chunks(chunks_dir, expected=n_chunks)
    ok = ~ds["failed"].values
    tests = sbc.uniformity_tests(ds["rank"].values[ok], int(ds.attrs["num_ranks"]))
    ds = results.add_variables(ds, {k: (("quantity",), np.asarray(v)) for k, v in tests.items()})
    path = results.save_dataset(ds, out / "results.nc")
    _save_sbc_plots(ds, out)
    summary = {
        "results": str(path),
        "replicates": S,
        "failed": int((~ok).sum()),
        "divergent_fits": int((ds["diverging"].values[ok] > 0).sum()),
        "ecdf_p": {q: float(p) for q, p in zip(ds["quantity"].values, tests["ecdf_p"])},
    }
    log.info("SBC done: %s", json.dumps(summary))
    return summary


def _save_sbc_plots(ds, out: Path):
    from . import plots

    figs = {
        "ecdf_diff.png": plots.plot_ecdf(ds, difference=True, split_divergent=True),
        "rank_hist.png": plots.plot_rank_histograms(ds),
        "zscore_contraction.png": plots.plot_zscore_contraction(ds),
        "diagnostics.png": plots.plot_diagnostics(ds),
    }
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=110, bbox_inches="tight")


# ----------------------------------------------------------------------------- fit real data
def _posterior_predictive(key, cfg, samples, x, w, y_noise, num):
    """Replicated data from the FITTED model's predictive distribution at ``num`` posterior draws.

    latent/marginal: the true process (their likelihood is exact); gaussian: the moment-matched
    normal, so the check shows where the approximation misses the observed tails.
    """
    import jax
    import jax.numpy as jnp

    from .likelihoods import moments
    from .simulate import _simulate_y

    sx = np.abs(samples["x_noise_lvl"]).reshape(-1)
    sw = np.abs(samples["w_noise_lvl"]).reshape(-1)
    pick = np.linspace(0, sx.size - 1, min(num, sx.size)).round().astype(int)
    keys = jax.random.split(key, pick.size)
    x, w = jnp.asarray(x), jnp.asarray(w)
    if cfg.model.name == "gaussian":
        def one(k, a, b):
            mean, var = moments(x, w, a, b, y_noise)
            return mean + jnp.sqrt(var) * jax.random.normal(k, mean.shape, dtype=x.dtype)
    else:
        shared = bool(cfg.design.get("shared_w_noise", False))

        def one(k, a, b):
            return _simulate_y(k, x, w, a, b, y_noise, shared)
    return np.asarray(jax.jit(jax.vmap(one))(keys, jnp.asarray(sx[pick]), jnp.asarray(sw[pick])))


def _ppc_summary(y, y_rep, x, w, samples, y_noise):
    """PIT values, and tail exceedances of the standardised residuals, observed vs replicated."""
    from .likelihoods import moments

    sx = float(np.median(np.abs(samples["x_noise_lvl"])))
    sw = float(np.median(np.abs(samples["w_noise_lvl"])))
    mean, var = (np.asarray(a) for a in moments(x, w, sx, sw, y_noise))
    sd = np.sqrt(var)
    z_obs = (y - mean) / sd
    z_rep = (y_rep - mean) / sd
    pit = (np.sum(y_rep < y, axis=0) + 0.5 * np.sum(y_rep == y, axis=0)) / y_rep.shape[0]
    thresholds = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    obs_exceed = np.array([np.mean(np.abs(z_obs) > t) for t in thresholds])
    rep_exceed = np.array([np.mean(np.abs(z_rep) > t, axis=1) for t in thresholds])  # (T, draws)
    # posterior predictive p-value of each tail fraction: P(rep >= obs)
    ppp = np.mean(rep_exceed >= obs_exceed[:, None], axis=1)
    return {
        "z_obs": z_obs, "z_rep": z_rep, "pit": pit, "thresholds": thresholds,
        "obs_exceed": obs_exceed, "rep_exceed_mean": rep_exceed.mean(axis=1),
        "rep_exceed_lo": np.quantile(rep_exceed, 0.05, axis=1), "rep_exceed_hi": np.quantile(rep_exceed, 0.95, axis=1),
        "tail_ppp": ppp,
    }


def run_fit(cfg):
    """Fit ``cfg.model`` to measured (x, w, y); writes posterior.nc, summary.csv, ppc.nc/.png, fit.json."""
    import jax
    import jax.numpy as jnp

    from . import diagnostics, plots, results
    from .engine import fit_batch
    from .identifiability import expected_fisher_information, posterior_degeneracy
    from .priors import get_prior

    out = _output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    path = cfg.data.path
    if not path:
        raise ValueError("data.path must name a netCDF or CSV file of measurements (x, w, y)")
    x, w, y = results.load_measurements(path, weights_path=cfg.data.get("weights_path"))
    from ._validation import check_design

    check_design(x, w, y)
    y_noise = float(cfg.data.get("y_noise", 0.0))
    prior = get_prior(_to_container(cfg.prior))
    model = _model(cfg, prior, y_noise)
    nuts = _nuts_config(cfg)
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    key = jax.random.PRNGKey(int(cfg.seed))
    k_fit, k_ppc, k_fim = jax.random.split(key, 3)
    data = {"x": jnp.asarray(x[None], dtype), "w": jnp.asarray(w[None], dtype), "y": jnp.asarray(y[None], dtype)}
    fit = fit_batch(k_fit, model, data, nuts)
    if bool(np.asarray(fit.failed)[0]):
        raise RuntimeError(f"the fit failed: {fit.error[0]}")
    samples = {p: np.asarray(fit.samples[p])[0] for p in PARAMS}  # (chain, draw)
    stats = {k: np.asarray(v)[0] for k, v in fit.sample_stats.items()}
    results.write_posterior(samples, stats, out / "posterior.nc", observed={"y": y},
                            constant_data={"x": x, "w": w},
                            attrs={"model": str(cfg.model.name), "prior": prior.name,
                                   "config_yaml": _config_yaml(cfg), "data_path": str(path)})
    table = diagnostics.summary_table(samples, hdi_prob=0.94)
    table.to_csv(out / "summary.csv")
    diag = diagnostics.compute_diagnostics({p: v[None] for p, v in samples.items()},
                                           {k: v[None] for k, v in stats.items()},
                                           max_tree_depth=nuts.max_tree_depth, params=list(PARAMS))
    degeneracy = posterior_degeneracy(samples, prior)
    post_med = {p: float(np.median(np.abs(samples[p]))) for p in PARAMS}
    fim = expected_fisher_information(k_fim, x, w, post_med["x_noise_lvl"], post_med["w_noise_lvl"],
                                      y_noise=y_noise, num_sims=int(cfg.task.get("fisher_sims", 32)))
    y_rep = _posterior_predictive(k_ppc, cfg, samples, x, w, y_noise, int(cfg.task.get("ppc_draws", 200)))
    ppc = _ppc_summary(y, y_rep, x, w, samples, y_noise)
    ppc_ds = results.build_ppc_dataset(y=y, y_rep=y_rep, pit=ppc["pit"], z_obs=ppc["z_obs"], z_rep=ppc["z_rep"],
                                       thresholds=ppc["thresholds"], obs_exceed=ppc["obs_exceed"],
                                       rep_exceed_lo=ppc["rep_exceed_lo"], rep_exceed_hi=ppc["rep_exceed_hi"],
                                       rep_exceed_mean=ppc["rep_exceed_mean"], tail_ppp=ppc["tail_ppp"],
                                       attrs={"model": str(cfg.model.name)})
    results.save_dataset(ppc_ds, out / "ppc.nc")
    fig = plots.plot_ppc(ppc_ds)
    fig.savefig(out / "ppc.png", dpi=110, bbox_inches="tight")
    summary = {
        "data": str(path),
        "model": str(cfg.model.name),
        "prior": prior.name,
        "n_obs": int(y.shape[0]),
        "n_inputs": int(w.shape[0]),
        "chain_method": fit.chain_method,
        "summary": table.reset_index().rename(columns={"index": "parameter"}).to_dict(orient="records"),
        "divergences": int(diag["diverging"][0]),
        "degeneracy": degeneracy,
        "fisher": {
            "information": np.asarray(fim.information).tolist(),
            "condition_number": float(fim.condition_number),
            "ridge_direction": np.asarray(fim.ridge_direction).tolist(),
            "crb_sd_log": np.asarray(fim.crb_sd).tolist(),
            "crb_corr": float(fim.crb_corr),
        },
        "ppc": {"tail_thresholds_sd": ppc["thresholds"].tolist(), "observed_fraction": ppc["obs_exceed"].tolist(),
                "replicated_fraction_mean": ppc["rep_exceed_mean"].tolist(), "tail_ppp": ppc["tail_ppp"].tolist()},
    }
    (out / "fit.json").write_text(json.dumps(summary, indent=2, default=float))
    log.info("fit done:\n%s", table.to_string())
    return summary


# ----------------------------------------------------------------------------- degeneracy map
def run_degeneracy(cfg):
    """Identifiability over design features: posterior contraction and FIM condition number.

    For every facet (N, M) and every cell (spread of |x_n|, ratio σ_w/σ_x) the true noise is
    fixed, data are simulated from the true process, the expected Fisher information is computed
    and (``task.fit``) the model is fitted by vectorized NUTS — all cells of a facet in one batch.
    """
    import jax
    import jax.numpy as jnp

    from . import plots, results
    from .engine import fit_batch
    from .identifiability import expected_fisher_information, posterior_degeneracy_batch
    from .priors import get_prior
    from .simulate import _simulate_y, make_design

    t = cfg.task
    out = _output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    prior = get_prior(_to_container(cfg.prior))
    spreads = [float(v) for v in t.x_spread]
    ratios = [float(v) for v in t.ratio]
    sx_true = float(t.x_noise_lvl)
    reps = int(t.replicates_per_cell)
    if not spreads or not ratios or reps < 1:
        raise ValueError("task.x_spread and task.ratio must be non-empty and task.replicates_per_cell >= 1")
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    root = jax.random.PRNGKey(int(cfg.seed))
    nuts = _nuts_config(cfg)
    y_noise = float(cfg.design.y_noise)
    model = _model(cfg, prior, y_noise)
    facets = [dict(f) for f in t.facets]
    shape = (len(facets), len(spreads), len(ratios))
    out_vars = {k: np.full(shape, np.nan) for k in
                ("log10_condition", "crb_sd_log_w", "crb_corr", "contraction_w", "contraction_x", "corr_log",
                 "abs_z_w", "divergent_fraction")}
    for fi, f in enumerate(facets):
        n_obs, n_in = int(f["n_obs"]), int(f["n_inputs"])
        cells = [(si, ri, r) for si in range(len(spreads)) for ri in range(len(ratios)) for r in range(reps)]
        xs, ws, ys, fims = [], [], [], {}
        for ci, (si, ri, r) in enumerate(cells):
            kd, ky, kf = jax.random.split(jax.random.fold_in(jax.random.fold_in(root, fi), ci), 3)
            d = make_design(kd, n_obs, n_in, x_dist="magnitude", x_scale=float(cfg.design.x_scale),
                            x_spread=spreads[si], w_dist=str(cfg.design.w_dist), w_scale=float(cfg.design.w_scale),
                            dtype=dtype)
            sw_true = ratios[ri] * sx_true
            ys.append(_simulate_y(ky, d.x, d.w, sx_true, sw_true, y_noise, False))
            xs.append(d.x)
            ws.append(d.w)
            if r == 0:
                fim = expected_fisher_information(kf, d.x, d.w, sx_true, sw_true, y_noise=y_noise,
                                                  num_sims=int(t.fisher_sims))
                out_vars["log10_condition"][fi, si, ri] = np.log10(float(fim.condition_number))
                out_vars["crb_sd_log_w"][fi, si, ri] = float(fim.crb_sd[1])
                out_vars["crb_corr"][fi, si, ri] = float(fim.crb_corr)
        if bool(t.get("fit", True)):
            data = {"x": jnp.stack(xs), "w": jnp.stack(ws), "y": jnp.stack(ys)}
            fit = fit_batch(jax.random.fold_in(root, 10_000 + fi), model, data, nuts)
            samples = {p: np.asarray(fit.samples[p]) for p in PARAMS}
            failed = np.asarray(fit.failed, bool)
            true = {"x_noise_lvl": np.full(len(cells), sx_true),
                    "w_noise_lvl": np.array([ratios[ri] * sx_true for _, ri, _ in cells])}
            safe = {p: np.where(failed[:, None, None], 1.0, samples[p]) for p in PARAMS}
            deg = posterior_degeneracy_batch(safe, prior, true=true)
            div = np.asarray(fit.sample_stats["diverging"]).reshape(len(cells), -1).mean(axis=1)
            per_cell = {
                "contraction_w": deg["contraction_log"]["w_noise_lvl"],
                "contraction_x": deg["contraction_log"]["x_noise_lvl"],
                "corr_log": deg["corr_log"],
                "abs_z_w": np.abs(deg["z_score_log"]["w_noise_lvl"]),
                "divergent_fraction": div,
            }
            for name, vals in per_cell.items():
                vals = np.where(failed, np.nan, np.asarray(vals, dtype=float))
                acc = np.zeros(shape[1:])
                cnt = np.zeros(shape[1:])
                for (si, ri, _), v in zip(cells, vals):
                    if np.isfinite(v):
                        acc[si, ri] += v
                        cnt[si, ri] += 1
                out_vars[name][fi] = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
    facet_names = [f"N={int(f['n_obs'])}, M={int(f['n_inputs'])}" for f in facets]
    ds = results.build_grid_dataset(
        out_vars,
        coords={"facet": facet_names, "x_spread": spreads, "ratio": ratios},
        long_names={
            "x_spread": "spread of log|x_n| across observations",
            "ratio": "true σ_w / σ_x",
            "log10_condition": "log10 condition number of the Fisher information",
            "crb_sd_log_w": "Cramér–Rao sd of log σ_w",
            "contraction_w": f"posterior contraction of log σ_w ({prior.name} prior)",
            "contraction_x": f"posterior contraction of log σ_x ({prior.name} prior)",
            "corr_log": "posterior correlation of log σ_x and log σ_w",
        },
        attrs={"prior": prior.name, "model": str(cfg.model.name), "x_noise_lvl": sx_true,
               "config_yaml": _config_yaml(cfg)},
    )
    results.save_dataset(ds, out / "degeneracy.nc")
    for value in ("log10_condition", "contraction_w", "corr_log"):
        if np.isfinite(ds[value].values).any():
            fig = plots.plot_degeneracy_map(ds, value=value)
            fig.savefig(out / f"degeneracy_{value}.png", dpi=110, bbox_inches="tight")
    summary = {"results": str(out / "degeneracy.nc"),
               "log10_condition": np.round(out_vars["log10_condition"], 2).tolist(),
               "contraction_w": np.round(out_vars["contraction_w"], 3).tolist()}
    log.info("degeneracy map done: %s", json.dumps(summary))
    return summary
