"""``task=fit``: fit a model to measured data (x, w, y) from a netCDF or CSV file.

Steps: load and check the measurements -> fit with the configured inference method -> compare
the fit's diagnostics with :data:`noisydot_sbc.diagnostics.THRESHOLDS` (a warning per parameter
below them, and the verdict in ``fit.json``) -> posterior degeneracy and the expected Fisher
information at the posterior median -> posterior predictive checks (:mod:`noisydot_sbc.ppc`).

Writes into the run folder: ``posterior.nc`` (ArviZ InferenceData), ``summary.csv``, ``ppc.nc``,
``ppc.png`` and ``fit.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..models import PARAMS
from . import common
from .common import log


def load_data(cfg):
    """The measurements (x (N, M), w (M,), y (N,)) named by ``data.path`` (and ``data.weights_path``)."""
    from .. import results
    from .._validation import check_design
    from ..config import data_path, weights_path

    path = data_path(cfg)
    if path is None:
        raise ValueError("data.path must name a netCDF or CSV file of measurements (x, w, y)")
    x, w, y = results.load_measurements(path, weights_path=weights_path(cfg))
    check_design(x, w, y)
    return path, x, w, y


def fit_once(cfg, key, model, x, w, y):
    """Fit ``model`` to one data set; the Posterior of one replicate, or RuntimeError saying why not."""
    import jax.numpy as jnp

    dtype = common.float_dtype()
    data = {"x": jnp.asarray(x[None], dtype), "w": jnp.asarray(w[None], dtype), "y": jnp.asarray(y[None], dtype)}
    posterior = common.inference_method(cfg).fit(key, model, data)
    if bool(np.asarray(posterior.failed)[0]):
        raise RuntimeError(f"the fit failed: {posterior.error[0]}")
    return posterior


def convergence_verdict(diag) -> dict:
    """The fit's R-hat, bulk and tail ESS per parameter against THRESHOLDS: ``{"ok": bool,
    "warnings": [...], "thresholds": {...}}``; every warning is also logged, naming the parameter."""
    from ..diagnostics import THRESHOLDS, threshold_warnings

    warnings = threshold_warnings(diag, 0)
    for msg in warnings:
        log.warning("the fit is below the convergence thresholds: %s; run longer (sampler.num_samples, "
                    "sampler.num_warmup) before trusting it", msg)
    used = ("r_hat", "ess_bulk", "ess_tail", "bfmi", "diverging")
    return {"ok": not warnings, "warnings": warnings, "thresholds": {k: THRESHOLDS[k] for k in used if k in THRESHOLDS}}


def run_fit(cfg) -> dict:
    """Fit ``cfg.model`` to the measured (x, w, y); writes posterior.nc, summary.csv, ppc.nc/.png,
    fit.json; returns the content of fit.json."""
    import jax

    from .. import diagnostics, plots, ppc, results
    from .._validation import atomic_write
    from ..identifiability import expected_fisher_information, posterior_degeneracy
    from ..rundir import prepare

    with prepare(cfg) as out:
        path, x, w, y = load_data(cfg)
        y_noise = float(cfg.data.y_noise)
        prior = common.load_prior(cfg)
        model = common.load_model(cfg, prior, y_noise)
        k_fit, k_ppc, k_fim = jax.random.split(jax.random.PRNGKey(int(cfg.seed)), 3)
        posterior = fit_once(cfg, k_fit, model, x, w, y)
        samples = {p: v[0] for p, v in common.posterior_draws(posterior).items()}  # (chain, draw)
        draw_stats = {k: np.asarray(v)[0] for k, v in posterior.sample_stats.items()}
        results.write_posterior(samples, draw_stats, out / "posterior.nc", observed={"y": y},
                                constant_data={"x": x, "w": w},
                                attrs={"model": str(cfg.model.name), "prior": prior.name, "inference": posterior.inference,
                                       "config_yaml": common.config_yaml(cfg), "data_path": str(path)})
        table = diagnostics.summary_table(samples, hdi_prob=0.94)
        table.to_csv(out / "summary.csv")
        diag = diagnostics.compute_diagnostics(posterior, params=list(PARAMS))
        verdict = convergence_verdict(diag)
        degeneracy = posterior_degeneracy(samples, prior)
        median = {p: float(np.median(np.abs(samples[p]))) for p in PARAMS}
        fim = expected_fisher_information(k_fim, x, w, median["x_noise_lvl"], median["w_noise_lvl"], y_noise=y_noise,
                                          num_sims=int(cfg.task.fisher_sims))
        y_rep = ppc.posterior_predictive(k_ppc, model, samples, x, w, int(cfg.task.ppc_draws))
        check = ppc.ppc_summary(y, y_rep, x, w, samples, y_noise)
        ppc_ds = results.build_ppc_dataset(
            y=y, y_rep=y_rep, pit=check["pit"], z_obs=check["z_obs"], z_rep=check["z_rep"],
            thresholds=check["thresholds"], obs_exceed=check["obs_exceed"], rep_exceed_lo=check["rep_exceed_lo"],
            rep_exceed_hi=check["rep_exceed_hi"], rep_exceed_mean=check["rep_exceed_mean"],
            tail_ppp=check["tail_ppp"], attrs={"model": str(cfg.model.name)})
        results.save_dataset(ppc_ds, out / "ppc.nc")
        plots.plot_ppc(ppc_ds).savefig(out / "ppc.png", dpi=110, bbox_inches="tight")
        summary = {
            "data": str(path),
            "model": str(cfg.model.name),
            "prior": prior.name,
            "inference": str(posterior.inference),
            "n_obs": int(y.shape[0]),
            "n_inputs": int(w.shape[0]),
            "chain_method": str((posterior.info or {}).get("chain_method", "")),
            "summary": table.reset_index().rename(columns={"index": "parameter"}).to_dict(orient="records"),
            "convergence": verdict,
            "divergences": int(diag["diverging"][0]) if "diverging" in diag else 0,
            "degeneracy": degeneracy,
            "fisher": {
                "information": np.asarray(fim.information).tolist(),
                "condition_number": float(fim.condition_number),
                "ridge_direction": np.asarray(fim.ridge_direction).tolist(),
                "crb_sd_log": np.asarray(fim.crb_sd).tolist(),
                "crb_corr": float(fim.crb_corr),
            },
            "ppc": {"tail_thresholds_sd": check["thresholds"].tolist(), "observed_fraction": check["obs_exceed"].tolist(),
                    "replicated_fraction_mean": check["rep_exceed_mean"].tolist(),
                    "tail_ppp": check["tail_ppp"].tolist()},
        }
        atomic_write(out / "fit.json", lambda p: Path(p).write_text(json.dumps(summary, indent=2, default=float)))
    log.info("fit done:\n%s", table.to_string())
    return summary
