"""``task=degeneracy``: the identifiability map over design features.

For every facet (N, M) and every cell (spread of |x_n| across observations, ratio σ_w/σ_x) the
true noise is fixed, ``task.replicates_per_cell`` data sets are simulated from the true process,
the expected Fisher information of (log σ_x, log σ_w) is computed at the truth and (``task.fit``)
the model is fitted with the configured inference method, all cells of a facet in one batch.
Writes ``degeneracy.nc`` (:func:`noisydot_sbc.results.build_grid_dataset`) and a heatmap per
headline measure.
"""
from __future__ import annotations

import json

import numpy as np

from ..models import PARAMS
from . import common
from .common import log

MEASURES = ("log10_condition", "crb_sd_log_w", "crb_corr", "contraction_w", "contraction_x", "corr_log", "abs_z_w",
            "divergent_fraction")
LONG_NAMES = {
    "x_spread": "spread of log|x_n| across observations",
    "ratio": "true σ_w / σ_x",
    "log10_condition": "log10 condition number of the Fisher information",
    "crb_sd_log_w": "Cramér–Rao sd of log σ_w",
}


def simulate_facet(cfg, root, facet_index, n_obs, n_inputs, cells):
    """Data of every (cell, replicate) of one facet, stacked: x (C, N, M), w (C, M), y (C, N);
    the expected Fisher information of the first replicate of each cell: (cell -> FisherResult)."""
    import jax
    import jax.numpy as jnp

    from ..identifiability import expected_fisher_information
    from ..simulate import design_kwargs, make_design, simulate_y_unchecked

    t, y_noise, sx_true = cfg.task, float(cfg.design.y_noise), float(cfg.task.x_noise_lvl)
    xs, ws, ys, fims = [], [], [], {}
    for ci, (spread, ratio, r) in enumerate(cells):
        kd, ky, kf = jax.random.split(jax.random.fold_in(jax.random.fold_in(root, facet_index), ci), 3)
        d = make_design(kd, dtype=common.float_dtype(), **design_kwargs(
            cfg.design, n_obs=n_obs, n_inputs=n_inputs, x_dist="magnitude", x_spread=spread))
        ys.append(simulate_y_unchecked(ky, d.x, d.w, sx_true, ratio * sx_true, y_noise, False))
        xs.append(d.x)
        ws.append(d.w)
        if r == 0:
            fims[ci] = expected_fisher_information(kf, d.x, d.w, sx_true, ratio * sx_true, y_noise=y_noise,
                                                   num_sims=int(t.fisher_sims))
    return {"x": jnp.stack(xs), "w": jnp.stack(ws), "y": jnp.stack(ys)}, fims


def posterior_measures(posterior, prior, sx_true, ratios_of_cells) -> dict:
    """Per fitted data set: contraction of log σ_w and log σ_x, posterior correlation of the logs,
    |z| of log σ_w, and the fraction of divergent transitions (when the method declares them);
    NaN for failed fits."""
    from ..identifiability import posterior_degeneracy_batch

    failed = np.asarray(posterior.failed, bool)
    samples = common.posterior_draws(posterior)
    true = {"x_noise_lvl": np.full(failed.size, sx_true), "w_noise_lvl": np.asarray(ratios_of_cells) * sx_true}
    safe = {p: np.where(failed[:, None, None], 1.0, samples[p]) for p in PARAMS}
    deg = posterior_degeneracy_batch(safe, prior, true=true)
    per_fit = {
        "contraction_w": deg["contraction_log"]["w_noise_lvl"],
        "contraction_x": deg["contraction_log"]["x_noise_lvl"],
        "corr_log": deg["corr_log"],
        "abs_z_w": np.abs(deg["z_score_log"]["w_noise_lvl"]),
    }
    if "diverging" in posterior.sample_stats:
        per_fit["divergent_fraction"] = np.asarray(posterior.sample_stats["diverging"]).reshape(failed.size, -1).mean(1)
    return {k: np.where(failed, np.nan, np.asarray(v, dtype=float)) for k, v in per_fit.items()}


def cell_means(values, cells, shape) -> np.ndarray:
    """Mean over the replicates of each (spread, ratio) cell of the finite ``values``; NaN where none."""
    acc, cnt = np.zeros(shape), np.zeros(shape)
    for (si, ri, _), v in zip(cells, values):
        if np.isfinite(v):
            acc[si, ri] += v
            cnt[si, ri] += 1
    return np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)


def run_degeneracy(cfg) -> dict:
    """The identifiability map; writes degeneracy.nc and heatmaps; returns headline figures."""
    import jax

    from .. import plots, results
    from ..rundir import prepare

    t = cfg.task
    spreads, ratios = [float(v) for v in t.x_spread], [float(v) for v in t.ratio]
    reps, sx_true = int(t.replicates_per_cell), float(t.x_noise_lvl)
    if not spreads or not ratios or reps < 1:
        raise ValueError("task.x_spread and task.ratio must be non-empty and task.replicates_per_cell >= 1")
    with prepare(cfg) as out:
        prior = common.load_prior(cfg)
        model = common.load_model(cfg, prior, cfg.design.y_noise)
        method = common.inference_method(cfg) if bool(t.fit) else None
        root = jax.random.PRNGKey(int(cfg.seed))
        facets = [(int(f["n_obs"]), int(f["n_inputs"])) for f in t.facets]
        shape = (len(spreads), len(ratios))
        grid = {k: np.full((len(facets),) + shape, np.nan) for k in MEASURES}
        index = [(si, ri, r) for si in range(len(spreads)) for ri in range(len(ratios)) for r in range(reps)]
        cells = [(spreads[si], ratios[ri], r) for si, ri, r in index]
        for fi, (n_obs, n_inputs) in enumerate(facets):
            data, fims = simulate_facet(cfg, root, fi, n_obs, n_inputs, cells)
            for ci, fim in fims.items():
                si, ri, _ = index[ci]
                grid["log10_condition"][fi, si, ri] = np.log10(float(fim.condition_number))
                grid["crb_sd_log_w"][fi, si, ri] = float(fim.crb_sd[1])
                grid["crb_corr"][fi, si, ri] = float(fim.crb_corr)
            if method is not None:
                posterior = method.fit(jax.random.fold_in(root, 10_000 + fi), model, data)
                for name, vals in posterior_measures(posterior, prior, sx_true, [c[1] for c in cells]).items():
                    grid[name][fi] = cell_means(vals, index, shape)
        ds = results.build_grid_dataset(
            grid, coords={"facet": [f"N={n}, M={m}" for n, m in facets], "x_spread": spreads, "ratio": ratios},
            long_names=dict(LONG_NAMES, **{
                "contraction_w": f"posterior contraction of log σ_w ({prior.name} prior)",
                "contraction_x": f"posterior contraction of log σ_x ({prior.name} prior)",
                "corr_log": "posterior correlation of log σ_x and log σ_w"}),
            attrs={"prior": prior.name, "model": str(cfg.model.name), "x_noise_lvl": sx_true,
                   "inference": method.name if method is not None else "", "config_yaml": common.config_yaml(cfg)},
        )
        results.save_dataset(ds, out / "degeneracy.nc")
        for value in ("log10_condition", "contraction_w", "corr_log"):
            if np.isfinite(ds[value].values).any():
                plots.plot_degeneracy_map(ds, value=value).savefig(out / f"degeneracy_{value}.png", dpi=110,
                                                                    bbox_inches="tight")
    summary = {"results": str(out / "degeneracy.nc"),
               "log10_condition": np.round(grid["log10_condition"], 2).tolist(),
               "contraction_w": np.round(grid["contraction_w"], 3).tolist()}
    log.info("degeneracy map done: %s", json.dumps(summary))
    return summary
