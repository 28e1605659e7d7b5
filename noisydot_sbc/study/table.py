"""The study's tables: one row per SBC cell (Holm verdicts, power) and one row per design.

One job: the numbers of the study, as pandas DataFrames. :func:`study_table` reads
each cell (:func:`cell_identity` from its stored config, ``results.summarize_run``,
:func:`reference_summary`) and gives the verdicts: every cell tests each of its quantities with
the exact ECDF test (Säilynoja et al. 2022); over all cells and quantities of the study the
p-values are adjusted with Holm's step-down method, so the whole table holds at the stated
family-wise ``alpha``: a cell is ``miscalibrated`` when any of its adjusted p-values is <= alpha,
else ``calibrated`` (meaning: no miscalibration detectable with this many replicates, see the
power columns that :func:`add_power` adds from the control :func:`select_control` picks).
:func:`identifiability_table` answers, per design, whether σ_x and σ_w can be told apart.
"""
from __future__ import annotations

import math

import numpy as np

from ..diagnostics import THRESHOLDS
from ..models import PARAMS
from .power import _col, detection_power, holm_adjust

__all__ = ["STUDY_ALPHA", "EXACT_MODELS", "REFERENCE_PREFIX", "REFERENCE_VARS", "DESIGN_KEYS", "cell_identity",
           "reference_summary", "study_table", "select_control", "add_power", "identifiability_table"]

STUDY_ALPHA = 0.05
EXACT_MODELS = ("latent", "marginal")  # the positive controls: exact likelihoods
REFERENCE_PREFIX = "ref_"  # per-replicate discrepancy to the exact posterior, dims (replicate, parameter)
REFERENCE_VARS = ("ref_w1_log", "ref_kl_log", "ref_median_shift", "ref_sd_ratio")


def _load_config(ds) -> dict:
    import yaml

    return yaml.safe_load(ds.attrs.get("config_yaml", "") or "{}") or {}


def cell_identity(ds) -> dict:
    """Which cell a results Dataset is: model, inference, prior, design and its key numbers,
    read from the resolved config stored in the Dataset (``attrs['config_yaml']``)."""
    cfg = _load_config(ds)
    design = cfg.get("design", {}) or {}
    sampler = cfg.get("sampler", {}) or {}
    prior = cfg.get("prior", {}) or {}
    model = str(ds.attrs.get("model") or (cfg.get("model") or {}).get("name", ""))
    x_spread = design.get("x_spread") if design.get("x_dist") == "magnitude" else None
    return {
        "model": model,
        "inference": str(ds.attrs.get("inference") or sampler.get("name", "")),
        "prior": str(ds.attrs.get("prior") or prior.get("name", "")),
        "role": "negative control" if prior.get("negative_control") else
                ("positive control" if model in EXACT_MODELS else "approximation"),
        "design": str(design.get("name", "")),
        "n_obs": design.get("n_obs"),
        "n_inputs": design.get("n_inputs"),
        "y_noise": design.get("y_noise"),
        "x_dist": design.get("x_dist"),
        "x_spread": x_spread,
    }


def reference_summary(ds) -> dict:
    """Medians over non-failed replicates of the stored discrepancies to the exact posterior
    (variables ``ref_*`` with dims (replicate, parameter)); the median of |shift| for a signed
    shift. Keys ``<variable>_<parameter>``; empty when the run stored none."""
    ok = ~np.asarray(ds["failed"].values, bool)
    out = {}
    for name in sorted(str(v) for v in ds.data_vars if str(v).startswith(REFERENCE_PREFIX)):
        var = ds[name]
        if var.dims != ("replicate", "parameter"):
            continue
        for p in [str(v) for v in ds["parameter"].values]:
            vals = np.asarray(var.sel(parameter=p).values, dtype=float)[ok]
            vals = vals[np.isfinite(vals)]
            if "shift" in name:
                vals = np.abs(vals)
            out[f"{name}_{p}"] = float(np.median(vals)) if vals.size else np.nan
    return out


def _stored_fisher(ds) -> float:
    if "fisher_condition_number" not in ds.variables:
        return np.nan
    ok = ~np.asarray(ds["failed"].values, bool)
    v = np.asarray(ds["fisher_condition_number"].values, dtype=float)[ok]
    v = v[~np.isnan(v)]
    return float(np.median(v)) if v.size else np.nan


def _cell_seconds(ds) -> float:
    """Fit time of a cell: the fits' wall-time shares (all replicates) plus the stored compile time."""
    if "wall_time_share" not in ds.variables:
        return np.nan
    t = np.asarray(ds["wall_time_share"].values, dtype=float)
    compile_time = float(ds.attrs.get("compile_time", 0.0) or 0.0)
    return float(np.nansum(t) + compile_time)


def study_table(datasets, alpha: float = STUDY_ALPHA):
    """One row per cell (a list of results Datasets), with Holm-adjusted ECDF p-values over the
    whole study (all cells x quantities), the smallest adjusted p of each cell and its verdict.
    Returns a :class:`pandas.DataFrame` (``df.attrs``: alpha, n_tests, per_test_level)."""
    import pandas as pd

    from ..results import summarize_run

    if not datasets:
        raise ValueError("datasets is empty: no SBC results to summarise")
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    rows = []
    for ds in datasets:
        run = summarize_run(ds)
        run = {k: v for k, v in run.items() if k not in ("model", "prior", "inference")}
        rows.append({**cell_identity(ds), **run, **reference_summary(ds),
                     "fisher_condition_number": _stored_fisher(ds), "cell_seconds": _cell_seconds(ds)})
    df = pd.DataFrame(rows)
    p_cols = [c for c in df.columns if c.startswith("ecdf_p_")]
    pvals = df[p_cols].to_numpy(dtype=float)
    adj = holm_adjust(pvals)
    for j, c in enumerate(p_cols):
        df["holm_p_" + c[len("ecdf_p_"):]] = adj[:, j]
    n_tests = int(np.isfinite(pvals).sum())
    worst = np.min(np.where(np.isfinite(adj), adj, np.inf), axis=1)
    df["min_holm_p"] = np.where(np.isfinite(worst), worst, np.nan)
    df["worst_quantity"] = [p_cols[int(np.argmin(np.where(np.isfinite(a), a, np.inf)))][len("ecdf_p_"):]
                            if np.isfinite(a).any() else "" for a in adj]
    df["verdict"] = np.where(~np.isfinite(worst), "no test", np.where(worst <= alpha, "miscalibrated", "calibrated"))
    df.attrs.update(alpha=float(alpha), n_tests=n_tests, per_test_level=float(alpha) / max(n_tests, 1))
    return df


def select_control(df, datasets):
    """Index of the cell whose stored draws give the power controls their posterior shapes: with
    draws stored, preferring a calibrated exact-model (positive-control) cell, then quadrature on
    the marginal model, then quadrature, then the most replicates; None when no cell stored
    draws. (A :class:`DefectSampler` is calibrated by construction, so any cell's shapes serve;
    the exact calibrated ones are the truest shapes.)"""
    best, best_key = None, None
    for i, ds in enumerate(datasets):
        row = df.iloc[i]
        n_ok = int(row["replicates"] - row["failed"])
        if "draws" not in ds.variables or n_ok < 1:
            continue
        key = (row["verdict"] == "calibrated" and row["role"] == "positive control",
               row["inference"] == "quadrature" and row["model"] == "marginal", row["inference"] == "quadrature", n_ok)
        if best_key is None or key > best_key:
            best, best_key = i, key
    return best


def add_power(df, control: dict, n_resamples: int = 200, seed: int = 0):
    """Columns ``power_<defect>_<parameter>``: the probability that each cell's replicate count
    (its non-failed replicates, its L) detects each defect at the study's per-test level, from
    the samplers of :func:`control_samplers`; ``power_<defect>`` the larger over parameters."""
    rng = np.random.default_rng(seed)
    level = float(df.attrs.get("per_test_level", STUDY_ALPHA))
    df.attrs["n_resamples"] = int(n_resamples)
    cache = {}
    by_defect = {}
    for (defect, p), sampler in control.items():
        col = f"power_{_col(defect)}_{p}"
        vals = []
        for n_ok, L in zip((df["replicates"] - df["failed"]).astype(int), df["num_ranks"].astype(int)):
            key = (defect, p, n_ok, L)
            if key not in cache:
                cache[key] = detection_power(rng, sampler, L, int(n_ok), level, n_resamples) if n_ok >= 2 else np.nan
            vals.append(cache[key])
        df[col] = vals
        by_defect.setdefault(defect, []).append(col)
    for defect, cols in by_defect.items():
        df[f"power_{_col(defect)}"] = df[cols].max(axis=1)
    return df


# --------------------------------------------------------------------------- identifiability
DESIGN_KEYS = ("design", "n_obs", "n_inputs", "y_noise", "x_dist", "x_spread")


def _design_label(row) -> str:
    parts = [f"N={row['n_obs']}", f"M={row['n_inputs']}"]
    if row.get("y_noise"):
        parts.append(f"σ_y={row['y_noise']:g}")
    if row.get("x_spread") is not None and not (isinstance(row.get("x_spread"), float) and math.isnan(row["x_spread"])):
        parts.append(f"spread={row['x_spread']:g}")
    return f"{row['design']} ({', '.join(parts)})"


def _prior_median(spec) -> float:
    fam, loc, scale = spec.family, float(spec.loc), float(spec.scale)
    if fam == "lognormal":
        return math.exp(loc)
    if fam == "halfnormal":
        return scale * 0.6744897501960817
    # |N(loc, scale)|: the median m solves Phi((m-loc)/s) - Phi((-m-loc)/s) = 1/2
    import scipy.optimize
    import scipy.stats

    f = lambda m: scipy.stats.norm.cdf((m - loc) / scale) - scipy.stats.norm.cdf((-m - loc) / scale) - 0.5
    return float(scipy.optimize.brentq(f, 1e-12, abs(loc) + 10 * scale))


def identifiability_table(df, datasets, fisher_sims: int = 32, n_designs: int = 2, seed: int = 0):
    """One row per design of the study: median log-scale contraction of σ_x and σ_w over the
    exact-model cells (all cells when there is none), the median Fisher condition number (stored
    ``fisher_condition_number`` when any cell has it, else ``rank_designs`` at the prior median
    noise levels on ``n_designs`` designs drawn like the cell's with ``fisher_sims`` simulations;
    ``fisher_sims=0`` skips the computation; the strong prior's medians when a cell of the design
    has it, the realistic device), the Cramér-Rao sd of log σ_w, the answer to "can
    σ_x and σ_w be told apart" and the designs' rank (best first, by E log I_eff,w)."""
    import pandas as pd

    groups = {}
    for i, row in df.iterrows():
        key = tuple(None if (isinstance(row[k], float) and math.isnan(row[k])) else row[k] for k in DESIGN_KEYS)
        groups.setdefault(key, []).append(i)
    rows = []
    for key, idx in groups.items():
        sub = df.loc[idx]
        exact = sub[sub["model"].isin(EXACT_MODELS) & (sub["role"] != "negative control")]
        use = exact if len(exact) else sub
        row = dict(zip(DESIGN_KEYS, key))
        row["label"] = _design_label(row)
        for p in PARAMS:
            c = f"contraction_log_{p}"
            row[c] = float(np.nanmedian(use[c])) if c in use and np.isfinite(use[c]).any() else np.nan
        stored = sub["fisher_condition_number"].to_numpy(dtype=float)
        row["fisher_condition_number"] = float(np.nanmedian(stored)) if np.isfinite(stored).any() else np.nan
        row["crb_sd_log_w_noise_lvl"] = np.nan
        row["utility"] = np.nan
        row["fisher_source"] = "stored per replicate at the true values" if np.isfinite(stored).any() else ""
        if fisher_sims > 0 and int(row["n_obs"] or 0) > 0:
            pick = [i for i in use.index if use.loc[i, "prior"] == "strong"] or list(use.index)
            res = _fisher_at_prior_median(datasets[pick[0]], fisher_sims, n_designs, seed)
            if not np.isfinite(row["fisher_condition_number"]):
                row["fisher_condition_number"] = res["condition_number"]
                row["fisher_source"] = (f"rank_designs, {n_designs} drawn designs, noise at the "
                                        f"{use.loc[pick[0], 'prior']} prior's medians")
            row["crb_sd_log_w_noise_lvl"] = res["crb_sd_log_w_noise_lvl"]
            row["utility"] = res["utility"]
        cw = row["contraction_log_w_noise_lvl"]
        cx = row["contraction_log_x_noise_lvl"]
        thr = THRESHOLDS["prior_dominated"]
        if not np.isfinite(cw):
            row["separable"] = "unknown (no contraction stored)"
        elif cw >= thr and (not np.isfinite(cx) or cx >= thr):
            row["separable"] = "yes"
        else:
            row["separable"] = "no: " + ("σ_w" if cw < thr else "σ_x") + " stays prior-dominated"
        rows.append(row)
    out = pd.DataFrame(rows)
    order = np.argsort(-np.where(np.isfinite(out["utility"]), out["utility"], -np.inf), kind="stable")
    out["design_rank"] = np.nan
    if np.isfinite(out["utility"]).any():
        ranks = np.empty(len(out))
        ranks[order] = np.arange(1, len(out) + 1)
        out["design_rank"] = np.where(np.isfinite(out["utility"]), ranks, np.nan)
    return out


def _fisher_at_prior_median(ds, fisher_sims: int, n_designs: int, seed: int) -> dict:
    """``identifiability.rank_designs`` entries of ``n_designs`` designs drawn like the cell's, at
    the prior-median noise levels: medians of condition number, CRB sd of log σ_w and utility."""
    import jax

    from .. import identifiability, priors, simulate

    cfg = _load_config(ds)
    d = cfg.get("design", {}) or {}
    prior = priors.get_prior(cfg["prior"]) if cfg.get("prior") else priors.get_prior(str(ds.attrs.get("prior")))
    sx, sw = _prior_median(prior.x_noise_lvl), _prior_median(prior.w_noise_lvl)
    entries = []
    with jax.enable_x64(True):  # designs and the exact likelihood in float64
        for k in range(n_designs):
            des = simulate.make_design(
                jax.random.PRNGKey(seed + k), int(d.get("n_obs", 200)), int(d.get("n_inputs", 8)),
                x_dist=str(d.get("x_dist", "normal")), x_scale=float(d.get("x_scale", 1.0)),
                x_spread=float(d.get("x_spread", 1.0)), w_dist=str(d.get("w_dist", "normal")),
                w_scale=float(d.get("w_scale", 1.0)))
            entries += identifiability.rank_designs(
                jax.random.PRNGKey(seed + 1000 + k), [np.asarray(des.x)], np.asarray(des.w), sx, sw,
                y_noise=float(d.get("y_noise", 0.0) or 0.0), num_sims=int(fisher_sims))
    return {k: float(np.median([e[k] for e in entries]))
            for k in ("condition_number", "crb_sd_log_w_noise_lvl", "utility")}
