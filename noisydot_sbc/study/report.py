"""The calibration study's summary: every SBC cell's ``results.nc`` -> one table, verdicts, power,
identifiability, and the report ``docs/results.md`` (+ ``results.csv`` and figures).

One job: turn finished SBC runs into the study's findings. It runs no posterior fit. Inputs are
the Datasets written by the SBC task (one per cell of models x inference x priors x designs);
outputs are a :class:`pandas.DataFrame` with a row per cell (:func:`study_table`), the
family-wise verdicts, the detectable effect of each cell's replicate count (:func:`add_power`),
and the report (:func:`write_study_report`; :class:`StudySummary` runs it at the end of a Hydra
multirun).

Verdicts. Every cell tests each of its quantities with the exact ECDF test (Säilynoja et al.
2022). Over all cells and quantities of the study the p-values are adjusted with Holm's
step-down method, so the whole table holds at the stated family-wise ``alpha``: a cell is
``miscalibrated`` when any of its adjusted p-values is <= alpha, else ``calibrated`` (meaning:
no miscalibration detectable with this many replicates, see the power columns).

Power. A calibrated posterior made wrong on purpose (on the log scale: its spread around the
median scaled by 0.8 or 1.25, or its draws shifted by 0.3 posterior sds) gives ranks that are
not uniform. The controls take the posterior shapes from one calibrated exact cell's stored
draws (quadrature on the marginal model preferred, :func:`select_control`): a
:class:`DefectSampler` places a calibrated truth at a fresh uniform quantile of a stored
posterior and returns the defective posterior's CDF there, ``u``. A cell with S replicates and
L ranks is mimicked by S such values and a rank ``Binomial(L, u)`` for each (the rank of the
truth among L independent draws), and :func:`detection_power` counts how often the ECDF test
rejects at the study's per-test level ``alpha / (number of tests)`` (Holm's first threshold,
the strictest a cell can meet: a lower bound on the power of the study's test). A rank depends
on the posterior only through ``u``, and ``u`` of a roughly log-normal posterior has the same
law whatever the design, so one control serves every cell. Hand-written because no library runs SBC power on stored posterior draws.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import sbc
from ..diagnostics import THRESHOLDS
from ..models import PARAMS

__all__ = ["STUDY_ALPHA", "Defect", "DEFECTS", "NO_DEFECT", "holm_adjust", "DefectSampler", "detection_power",
           "control_samplers", "select_control", "cell_identity", "reference_summary", "study_table", "add_power",
           "identifiability_table", "findings", "write_study_report", "StudySummary", "EXACT_MODELS"]

STUDY_ALPHA = 0.05
EXACT_MODELS = ("latent", "marginal")  # the positive controls: exact likelihoods
REFERENCE_PREFIX = "ref_"  # per-replicate discrepancy to the exact posterior, dims (replicate, parameter)
REFERENCE_VARS = ("ref_w1_log", "ref_kl_log", "ref_median_shift", "ref_sd_ratio")


class Defect(NamedTuple):
    """A known miscalibration applied to exact posterior draws on the log scale."""

    name: str
    kind: str  # "scale": spread around the median times ``amount``; "shift": + amount posterior sds
    amount: float


DEFECTS = (
    Defect("width x0.8", "scale", 0.8),
    Defect("width x1.25", "scale", 1.25),
    Defect("median +0.3 sd", "shift", 0.3),
)
NO_DEFECT = Defect("none", "scale", 1.0)  # the control itself: its power is the test's size


def _col(defect_name: str) -> str:
    return defect_name.replace(" ", "_").replace("+", "").replace(".", "")


def holm_adjust(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (same shape as the input; NaN entries stay NaN and do
    not count as tests). Controls the family-wise error rate over all finite entries:
    ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j))`` over the sorted p-values."""
    p = np.asarray(p_values, dtype=float)
    flat = p.ravel()
    ok = np.isfinite(flat)
    if np.any(flat[ok] < 0) or np.any(flat[ok] > 1):
        raise ValueError("p_values must lie in [0, 1]")
    out = np.full(flat.shape, np.nan)
    vals = flat[ok]
    m = vals.size
    if m:
        order = np.argsort(vals, kind="stable")
        adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * vals[order]))
        res = np.empty(m)
        res[order] = adj
        out[ok] = res
    return out.reshape(p.shape)


class DefectSampler:
    """Draws the CDF at the truth, ``u``, of defective posteriors shaped like stored ones.

    ``draws_log`` (S, D): log-scale posterior draws of one parameter in S replicates of a cell.
    A call ``sampler(rng, n)`` picks n replicates (with replacement), places a calibrated truth
    in each at a fresh uniform quantile U (``t = Q_s(U)``, the linear-interpolation quantile of
    the replicate's draws) and returns the CDF at ``t`` of the replicate's posterior made wrong by
    ``defect`` (``scale``: draws ``med + amount (d - med)``; ``shift``: draws ``d + amount sd``),
    read from the same interpolated CDF, so that without a defect ``u == U`` exactly. Fresh U per
    pick keeps repeated replicates from giving repeated ranks (resampling the S stored ranks
    themselves would inflate the test's size; measured 0.06 instead of 0.0008 at S = 1000)."""

    def __init__(self, draws_log, defect: Defect):
        d = np.asarray(draws_log, dtype=float)
        if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] < 2:
            raise ValueError(f"draws_log must be (S, D) with D >= 2 draws per replicate, got shape {d.shape}")
        if not np.isfinite(d).all():
            raise ValueError("draws_log must be finite (leave failed replicates out)")
        if defect.kind not in ("scale", "shift"):
            raise ValueError(f"defect.kind must be 'scale' or 'shift', got {defect.kind!r}")
        if defect.kind == "scale" and defect.amount <= 0:
            raise ValueError(f"defect.amount must be > 0 for a scale defect, got {defect.amount}")
        self.draws = np.sort(d, axis=1)
        self.median = np.median(d, axis=1)
        self.sd = d.std(axis=1, ddof=1)
        self.defect = defect

    def __call__(self, rng: np.random.Generator, n: int) -> np.ndarray:
        S, D = self.draws.shape
        rows = rng.integers(0, S, size=int(n))
        d = self.draws[rows]
        ar = np.arange(d.shape[0])
        pos = rng.random(d.shape[0]) * (D - 1)
        lo = np.minimum(np.floor(pos).astype(np.int64), D - 2)
        t = d[ar, lo] + (pos - lo) * (d[ar, lo + 1] - d[ar, lo])
        # the undefected value whose defective image is t: CDF_defective(t) = CDF(x)
        if self.defect.kind == "scale":
            x = self.median[rows] + (t - self.median[rows]) / self.defect.amount
        else:
            x = t - self.defect.amount * self.sd[rows]
        j = np.clip(np.sum(d <= x[:, None], axis=1), 1, D - 1)  # d[j-1] <= x < d[j] inside the range
        left, right = d[ar, j - 1], d[ar, j]
        width = right - left
        frac = np.where(width > 0, (x - left) / np.where(width > 0, width, 1.0), 0.0)
        return np.clip((j - 1 + frac) / (D - 1), 0.0, 1.0)


def detection_power(rng: np.random.Generator, cdf_sampler, num_ranks: int, n_replicates: int, level: float,
                    n_resamples: int = 200) -> float:
    """Probability that the ECDF test at ``level`` rejects uniformity for ``n_replicates`` ranks
    on ``0..num_ranks`` from posteriors whose CDF at the truth is drawn by ``cdf_sampler(rng, n)``
    (a :class:`DefectSampler`, or any callable returning n values in [0, 1]).

    Each resample draws ``n_replicates`` values u and a rank ``Binomial(num_ranks, u)`` for each
    (the rank of the truth among L independent posterior draws); rejection at ``level`` is the
    ECDF leaving the simultaneous ``1 - level`` band, i.e. the Γ statistic below the band's
    ``gamma`` (:func:`noisydot_sbc.sbc.ecdf_simultaneous_band`), the test of ``sbc.ecdf_uniformity``."""
    if not callable(cdf_sampler):
        raise ValueError(f"cdf_sampler must be callable (rng, n) -> (n,) values in [0, 1], got {cdf_sampler!r}")
    if not isinstance(n_replicates, (int, np.integer)) or n_replicates < 2:
        raise ValueError(f"n_replicates must be an integer >= 2, got {n_replicates!r}")
    if not (0.0 < level < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples!r}")
    gamma = sbc.ecdf_simultaneous_band(int(n_replicates), int(num_ranks), alpha=float(level)).gamma
    hits = 0
    for _ in range(int(n_resamples)):
        u = np.asarray(cdf_sampler(rng, int(n_replicates)), dtype=float)
        if u.shape != (n_replicates,) or not np.all((u >= 0) & (u <= 1)):
            raise ValueError(f"cdf_sampler must return {n_replicates} values in [0, 1], got shape {u.shape}")
        hits += sbc.ecdf_gamma_statistic(rng.binomial(int(num_ranks), u), num_ranks) < gamma
    return hits / n_resamples


def control_samplers(ds, defects=DEFECTS + (NO_DEFECT,)) -> dict:
    """{(defect name, parameter): :class:`DefectSampler`} of every defect on a cell's stored
    draws (``draws`` (replicate, chain, draw, parameter), log of their absolute value). Failed
    replicates are left out."""
    for v in ("draws", "failed"):
        if v not in ds.variables:
            raise ValueError(f"ds is missing the variable {v!r} needed for the power controls")
    ok = ~np.asarray(ds["failed"].values, bool)
    draws = np.asarray(ds["draws"].transpose("replicate", "chain", "draw", "parameter").values)[ok]
    s = draws.shape[0]
    if s < 1:
        raise ValueError("ds has no non-failed replicate to build the power controls from")
    flat = draws.reshape(s, -1, draws.shape[-1])
    out = {}
    for j, p in enumerate(str(v) for v in ds["parameter"].values):
        d = np.log(np.abs(flat[:, :, j]))
        for defect in defects:
            out[(defect.name, p)] = DefectSampler(d, defect)
    return out


# --------------------------------------------------------------------------- the table
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



# --------------------------------------------------------------------------- the report
_MODEL_ORDER = ("latent", "marginal", "gaussian")
_INFERENCE_ORDER = ("nuts", "quadrature")
_PRIOR_ORDER = ("strong", "weak", "naive")
_SYMBOL = {"x_noise_lvl": "σ_x", "w_noise_lvl": "σ_w"}


def _rank_of(value, order) -> tuple:
    return (order.index(value) if value in order else len(order), str(value))


def _fmt(v, spec: str = ".2g", dash: str = "—") -> str:
    if v is None:
        return dash
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(f):
        return dash
    if spec == "p":
        return "< 1e-15" if f < 1e-15 else (f"{f:.2g}" if f < 0.01 else f"{f:.2f}")
    return format(f, spec)


def _sym(p: str) -> str:
    return _SYMBOL.get(p, p)


def _pair(row, stem: str, spec=".2g") -> str:
    vals = [row.get(f"{stem}{p}", np.nan) for p in PARAMS]
    if not any(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
        return "—"
    return " / ".join(_fmt(v, spec) for v in vals)


def _markdown_table(header, rows) -> str:
    esc = lambda s: str(s).replace("|", "\\|")
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _quantities(df) -> list[str]:
    return [c[len("ecdf_p_"):] for c in df.columns if c.startswith("ecdf_p_")]


def _results_table_md(df) -> str:
    qs = _quantities(df)
    header = (["cell", "prior", "design", "role", "S", "failed"]
              + [f"ECDF p {q} (Holm)" for q in qs]
              + [f"90% coverage ({', '.join(qs)})", "z mean ± sd σ_x", "z mean ± sd σ_w",
                 "contraction σ_x / σ_w", "W1 log σ_x / σ_w", "|median shift| σ_x / σ_w (sd)",
                 "divergent fits", "s per fit", "cell fit time (s)"]
              + [f"power {d.name}" for d in DEFECTS] + ["verdict"])
    rows = []
    for _, r in df.iterrows():
        contraction = "contraction_log_" if any(f"contraction_log_{p}" in df for p in PARAMS) else "contraction_"
        rows.append(
            [r["cell"], r["prior"], r["design_label"], r["role"], int(r["replicates"]), int(r["failed"])]
            + [f"{_fmt(r[f'ecdf_p_{q}'], 'p')} ({_fmt(r[f'holm_p_{q}'], 'p')})" for q in qs]
            + ["/".join(_fmt(r[f"coverage90_{q}"], ".2f") for q in qs)]
            + [f"{_fmt(r[f'z_mean_{p}'], '.2f')} ± {_fmt(r[f'z_sd_{p}'], '.2f')}" for p in PARAMS]
            + [_pair(r, contraction, ".2f"), _pair(r, "ref_w1_log_", ".2g"), _pair(r, "ref_median_shift_", ".2g"),
               _fmt(r["divergent_fraction"], ".1%"), _fmt(r["seconds_per_fit"], ".2g"), _fmt(r["cell_seconds"], ".0f")]
            + [_fmt(r.get(f"power_{_col(d.name)}", np.nan), ".2f") for d in DEFECTS]
            + [f"**{r['verdict']}**" if r["verdict"] == "miscalibrated" else r["verdict"]])
    return _markdown_table(header, rows)


def _p_is(v) -> str:
    text = _fmt(v, "p")
    return text if text.startswith("<") else f"= {text}"


def _worst(r) -> str:
    q = r["worst_quantity"]
    return f"{q}: p {_p_is(r[f'ecdf_p_{q}'])}, Holm-adjusted p {_p_is(r[f'holm_p_{q}'])}"


def _where(r) -> str:
    return f"{r['cell']} under the {r['prior']} prior on {r['design_label']}"


def findings(df, ident=None, control_label: str | None = None) -> list[str]:
    """The study's findings as plain sentences, generated from the table (``study_table`` with
    ``cell``/``design_label`` columns, power columns when computed) and the identifiability
    table."""
    alpha, n_tests = df.attrs.get("alpha", STUDY_ALPHA), df.attrs.get("n_tests", 0)
    out = [f"{len(df)} cells, {n_tests} ECDF tests; Holm's method over all of them holds the family-wise "
           f"error rate at α = {alpha:g}, so a cell is called miscalibrated when one of its adjusted p-values "
           f"is ≤ {alpha:g}."]
    pos = df[df["role"] == "positive control"]
    bad_pos = pos[pos["verdict"] == "miscalibrated"]
    if len(pos):
        if bad_pos.empty:
            out.append(f"Positive control: all {len(pos)} cells of the exact models ({', '.join(sorted(set(pos['cell'])))}) "
                       f"are calibrated (smallest Holm-adjusted p {_p_is(pos['min_holm_p'].min())}).")
        else:
            out.append("Positive control FAILED: " + "; ".join(f"{_where(r)} ({_worst(r)})" for _, r in bad_pos.iterrows())
                       + ". An exact model must pass; the sampler, likelihood or simulator of these cells needs a look "
                       "before their numbers are trusted.")
    approx = df[df["role"] == "approximation"]
    if len(approx):
        bad = approx[approx["verdict"] == "miscalibrated"]
        good = approx[approx["verdict"] == "calibrated"]
        if len(bad):
            out.append("The Gaussian approximation is miscalibrated in " + f"{len(bad)} of {len(approx)} cell"
                       f"{'s' if len(approx) > 1 else ''}: "
                       + "; ".join(f"{_where(r)} ({_worst(r)})" for _, r in bad.iterrows()) + ".")
        if len(good):
            out.append(f"{'It' if len(bad) else 'The Gaussian approximation'} shows no detectable miscalibration in {len(good)} cell{'s' if len(good) > 1 else ''}: "
                       + "; ".join(f"{_where(r)} (smallest Holm-adjusted p {_p_is(r['min_holm_p'])})"
                                   for _, r in good.iterrows()) + ".")
    neg = df[df["role"] == "negative control"]
    for _, r in neg.iterrows():
        out.append(f"Negative control ({r['prior']} prior, {r['cell']} on {r['design_label']}): "
                   + ("detected as miscalibrated, as it should be (" + _worst(r) + ")." if r["verdict"] == "miscalibrated"
                      else f"not detected (smallest Holm-adjusted p {_p_is(r['min_holm_p'])}) at S = "
                           f"{int(r['replicates'] - r['failed'])}."))
    w1 = [c for c in df.columns if c.startswith("ref_w1_log_")]
    if w1:
        has = df[np.isfinite(df[w1].to_numpy(dtype=float)).any(axis=1)]
        for _, r in has.iterrows():
            out.append(f"Distance to the exact posterior, {_where(r)}: median W1 on the log scale "
                       f"{_pair(r, 'ref_w1_log_', '.2g')} (σ_x / σ_w), median |median shift| "
                       f"{_pair(r, 'ref_median_shift_', '.2g')} exact-posterior sds"
                       + (f", sd ratio {_pair(r, 'ref_sd_ratio_', '.2f')}" if any(f"ref_sd_ratio_{p}" in r for p in PARAMS)
                          else "") + ".")
    else:
        out.append("No cell stored discrepancies to the exact posterior (ref_* variables); those columns show —.")
    div = df[np.isfinite(df["divergent_fraction"].to_numpy(dtype=float)) & (df["divergent_fraction"] > 0)]
    if len(div):
        out.append("Fits with divergent transitions: " + "; ".join(
            f"{_where(r)}: {_fmt(r['divergent_fraction'], '.1%')}" for _, r in div.iterrows()) + ".")
    power_cols = [f"power_{_col(d.name)}" for d in DEFECTS]
    if all(c in df for c in power_cols):
        seen = {}
        for _, r in df.iterrows():
            key = (int(r["replicates"] - r["failed"]), int(r["num_ranks"]))
            seen.setdefault(key, [r[c] for c in power_cols])
        level = df.attrs.get("per_test_level", alpha)
        text = "; ".join(f"S = {s} (L = {L}): " + ", ".join(f"{d.name} {_fmt(v, '.2f')}" for d, v in zip(DEFECTS, vals))
                         for (s, L), vals in sorted(seen.items()))
        none = f"power_{_col(NO_DEFECT.name)}"
        size = (f" Without a defect the same control is rejected at a rate of at most {_fmt(df[none].max(), '.3f')} "
                f"over the cells (nominal {level:.2g}; {df.attrs.get('n_resamples', '?')} resamples each)."
                if none in df else "")
        out.append(f"What each replicate count can detect (power of the ECDF test at the per-test level "
                   f"{level:.2g}, controls built from the draws of {control_label}): {text}.{size}")
    else:
        out.append("Power not computed: no cell stored posterior draws to build the controls from.")
    sec = df[np.isfinite(df["seconds_per_fit"].to_numpy(dtype=float))]
    if len(sec):
        per = sec.groupby("cell", sort=False)["seconds_per_fit"].median()
        total = float(np.nansum(df["cell_seconds"].to_numpy(dtype=float)))
        out.append("Cost: median seconds per fit " + ", ".join(f"{c} {_fmt(v, '.2g')}" for c, v in per.items())
                   + f"; the cells' fits took {total / 60:.1f} min in all (compile time included, sums of the "
                   "fits' wall-time shares; the study's wall time adds simulation and summaries).")
    if ident is not None and len(ident):
        for _, r in ident.iterrows():
            out.append(f"Design {r['label']}: median contraction of log σ_w {_fmt(r['contraction_log_w_noise_lvl'], '.2f')}"
                       f" (log σ_x {_fmt(r['contraction_log_x_noise_lvl'], '.2f')}), Fisher condition number "
                       f"{_fmt(r['fisher_condition_number'], '.3g')}; can σ_x and σ_w be told apart: {r['separable']}.")
        ranked = ident[np.isfinite(ident["design_rank"].to_numpy(dtype=float))].sort_values("design_rank")
        if len(ranked):
            out.append("Design advice (identifiability.rank_designs, information about log σ_w once σ_x is estimated, "
                       "at the prior-median noise levels): " + " > ".join(
                           f"{r['label']} (Cramér-Rao sd of log σ_w {_fmt(r['crb_sd_log_w_noise_lvl'], '.2f')})"
                           for _, r in ranked.iterrows()) + ".")
    return out


def _load_cells(root):
    from ..results import REQUIRED_VARS, find_runs, load_dataset

    paths = find_runs(root)
    datasets, used, skipped = [], [], []
    for p in paths:
        ds = load_dataset(p)
        if any(v not in ds.variables for v in REQUIRED_VARS) or "num_ranks" not in ds.attrs:
            skipped.append(str(p))
            continue
        datasets.append(ds)
        used.append(p)
    if not datasets:
        raise ValueError(f"root {str(root)!r}: no SBC results.nc below it")
    return datasets, used, skipped


def write_study_report(root, docs_dir, alpha: float = STUDY_ALPHA, n_resamples: int = 200, fisher_sims: int = 32,
                       n_designs: int = 2, seed: int = 0) -> dict:
    """Read every cell's ``results.nc`` below ``root`` (a Hydra multirun folder) and write
    ``docs_dir/results.md`` (table, findings, power, identifiability), ``docs_dir/results.csv``
    (the same table, every column) and ``docs_dir/figures/study_ecdf_<prior>.png`` (one ECDF grid per prior; +
    ``study_reference.png`` when any cell stored ``ref_*`` discrepancies).

    ``alpha``: family-wise level; ``n_resamples``: resamples per power value; ``fisher_sims``:
    simulations per Fisher information (0: use only what the cells stored); ``n_designs``: drawn
    designs per study design. Returns {"table", "identifiability" (DataFrames), "findings"
    (sentences), "paths" (written files), "control" (the power control's cell or None),
    "skipped" (files that are not SBC results)}. Runs that wrote ``left_out.txt`` instead of results
    (a cell that leaves a design out) are listed with their reason."""
    from .. import plots
    from .._validation import atomic_write

    datasets, paths, skipped = _load_cells(root)
    order = sorted(range(len(datasets)), key=lambda i: (
        _rank_of(cell_identity(datasets[i])["model"], _MODEL_ORDER),
        _rank_of(cell_identity(datasets[i])["inference"], _INFERENCE_ORDER),
        _rank_of(cell_identity(datasets[i])["prior"], _PRIOR_ORDER),
        str(cell_identity(datasets[i])["design"]), str(paths[i])))
    datasets, paths = [datasets[i] for i in order], [paths[i] for i in order]
    df = study_table(datasets, alpha=alpha)
    df.insert(0, "cell", [f"{m}/{i}" for m, i in zip(df["model"], df["inference"])])
    df.insert(1, "design_label", [_design_label(r) for _, r in df.iterrows()])
    df["path"] = [str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else str(p) for p in paths]
    ci = select_control(df, datasets)
    control_label = None
    if ci is not None:
        control_label = f"{df.iloc[ci]['cell']} ({df.iloc[ci]['prior']} prior, {df.iloc[ci]['design_label']}, " \
                        f"S = {int(df.iloc[ci]['replicates'] - df.iloc[ci]['failed'])})"
        if not (df.iloc[ci]["role"] == "positive control" and df.iloc[ci]["verdict"] == "calibrated"):
            control_label += ", not a calibrated exact-model cell (the study has none with draws): its posterior shapes only"
        add_power(df, control_samplers(datasets[ci]), n_resamples=n_resamples, seed=seed)
    ident = identifiability_table(df, datasets, fisher_sims=fisher_sims, n_designs=n_designs, seed=seed)
    sentences = findings(df, ident, control_label)
    left_out = [(str(p.parent.relative_to(root)), p.read_text().strip()) for p in sorted(Path(root).rglob("left_out.txt"))]
    if left_out:
        sentences.append(f"{len(left_out)} runs of the sweep were left out by their cell's configuration (listed "
                         "under 'Runs left out').")

    docs = Path(docs_dir)
    figs = docs / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    written = {}
    for prior in sorted(set(df["prior"]), key=lambda v: _rank_of(v, _PRIOR_ORDER)):
        # one grid per prior: rows model/inference, columns the designs (a readable width)
        sel = [(r, ds) for (_, r), ds in zip(df.iterrows(), datasets) if r["prior"] == prior]
        cells = {(r["cell"], r["design_label"]): ds for r, ds in sel}
        pv = {(r["cell"], r["design_label"]): f"Holm p {_fmt(r['min_holm_p'], 'p')} ({r['worst_quantity']})"
              for r, _ in sel}
        designs = sorted({r["design_label"]: r for r, _ in sel}.values(), key=lambda r: (
            r["x_dist"] == "magnitude", bool(r["y_noise"]), r["n_inputs"] or 0, r["n_obs"] or 0, r["design"]))
        fig = plots.plot_study_ecdf(cells, alpha=0.05, p_values=pv, title=f"{prior} prior",
                                    cols=[r["design_label"] for r in designs])
        path = figs / f"study_ecdf_{prior}.png"
        written[f"ecdf_figure_{prior}"] = path
        atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    has_ref = any(c.startswith("ref_w1_log_") and np.isfinite(df[c].to_numpy(dtype=float)).any() for c in df.columns)
    if has_ref:
        labelled = df.assign(cell=[f"{r['cell']} · {r['prior']} · {r['design_label']}" for _, r in df.iterrows()])
        fig = plots.plot_reference_discrepancy(labelled)
        written["reference_figure"] = figs / "study_reference.png"
        atomic_write(written["reference_figure"], lambda p: fig.savefig(p, dpi=110, format="png"))

    written["csv"] = docs / "results.csv"
    atomic_write(written["csv"], lambda p: df.to_csv(p, index=False, float_format="%.6g"))
    ident_csv_cols = [c for c in ident.columns]
    md = _report_markdown(df, ident[ident_csv_cols], sentences, control_label, written, docs, n_resamples, left_out)
    written["md"] = docs / "results.md"
    atomic_write(written["md"], lambda p: Path(p).write_text(md, encoding="utf-8"))
    for ds in datasets:
        ds.close()
    return {"table": df, "identifiability": ident, "findings": sentences, "paths": written,
            "control": control_label, "skipped": skipped}


def _report_markdown(df, ident, sentences, control_label, written, docs, n_resamples, left_out=()) -> str:
    alpha = df.attrs["alpha"]
    rel = lambda p: Path(p).relative_to(docs).as_posix()
    lines = [
        "# Calibration study: results",
        "",
        "Generated by `noisydot_sbc.study.write_study_report` from the SBC runs of one study (every cell's "
        "`results.nc`); do not edit by hand, rerun the study or `python experiments/summarize_study.py ROOT`.",
        "",
        "## Findings",
        "",
        *[f"- {s}" for s in sentences],
        "",
        "## Table",
        "",
        f"One row per cell. ECDF p: the exact ECDF uniformity test of the ranks (failed replicates left out), "
        f"in brackets Holm-adjusted over all {df.attrs['n_tests']} tests of the study; verdict at family-wise "
        f"α = {alpha:g}. Coverage: fraction of replicates whose true value lies in the central 90% posterior "
        f"interval (expected {_fmt(df['coverage90_expected'].iloc[0], '.3f')} for this L). z: posterior z-score "
        "(calibrated: mean 0, sd about 1). Contraction: median posterior contraction on the log scale "
        "(1: the data decide, 0: the prior does). W1 log and |median shift|: median over replicates of the "
        "discrepancy to the exact posterior (— where the run stored none). Power: probability that this "
        f"cell's replicate count detects the defect (larger over σ_x and σ_w) at the per-test level "
        f"{df.attrs['per_test_level']:.2g}. `{rel(written['csv'])}` holds the same rows with every column.",
        "",
        _results_table_md(df),
        "",
        "## Power: what each replicate count can detect",
        "",
        ("Negative controls with a known defect, applied on the log scale to the stored posterior draws of "
         f"{control_label}: widths (spread around the median) scaled by 0.8 and 1.25, medians shifted by 0.3 "
         "posterior sd. Each cell's S non-failed replicates and L ranks are mimicked by placing a calibrated truth at a "
         "fresh uniform quantile of a resampled stored posterior, taking the defective posterior's CDF u there and "
         f"drawing a Binomial(L, u) rank ({n_resamples} resamples of S ranks), tested with the "
         "same ECDF test at Holm's first threshold (a lower bound on the study's power). `none` is the control "
         "without a defect: its rejection rate is the test's size.") if control_label else
        "Not computed: no cell stored posterior draws.",
        "",
    ]
    if control_label:
        pairs = [(d.name, p) for p in PARAMS for d in DEFECTS + (NO_DEFECT,) if f"power_{_col(d.name)}_{p}" in df]
        cols = [f"power_{_col(d)}_{p}" for d, p in pairs]
        seen = {}
        for _, r in df.iterrows():
            seen.setdefault((int(r["replicates"] - r["failed"]), int(r["num_ranks"])), r)
        header = ["S", "L"] + [f"{d} {_sym(p)}" for d, p in pairs]
        lines += [_markdown_table(header, [[s, L] + [_fmt(r[c], ".2f") for c in cols]
                                           for (s, L), r in sorted(seen.items())]), ""]
    lines += [
        "## Identifiability: can σ_x and σ_w be told apart?",
        "",
        f"Per design: median log-scale contraction over the exact-model cells (σ_w is told apart from σ_x when it "
        f"contracts by at least {THRESHOLDS['prior_dominated']:g}, the project's prior-domination threshold), the "
        "Fisher-information condition number of (log σ_x, log σ_w) and the Cramér-Rao sd of log σ_w once σ_x is "
        "estimated too; rank: `identifiability.rank_designs` utility E[log I_eff,w], best first.",
        "",
        _markdown_table(
            ["design", "contraction σ_x", "contraction σ_w", "Fisher condition number", "CRB sd log σ_w",
             "rank", "told apart?", "Fisher source"],
            [[r["label"], _fmt(r["contraction_log_x_noise_lvl"], ".2f"), _fmt(r["contraction_log_w_noise_lvl"], ".2f"),
              _fmt(r["fisher_condition_number"], ".3g"), _fmt(r["crb_sd_log_w_noise_lvl"], ".2f"),
              _fmt(r["design_rank"], ".0f"), r["separable"], r["fisher_source"] or "—"] for _, r in ident.iterrows()]),
        "",
        "## Figures",
        "",
        *[f"![ECDF difference per cell, {k[len('ecdf_figure_'):]} prior]({rel(v)})\n" for k, v in written.items()
          if k.startswith("ecdf_figure_")],
    ]
    if "reference_figure" in written:
        lines += [f"![Discrepancy to the exact posterior]({rel(written['reference_figure'])})", ""]
    if left_out:
        lines += ["## Runs left out", "", *[f"- `{run}`: {reason}" for run, reason in left_out], ""]
    return "\n".join(lines)


try:  # Hydra is a dependency of the project; the callback base class is optional at import time
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object


class StudySummary(_Callback):
    """Hydra callback: at the end of a multirun, :func:`write_study_report` on the sweep folder.

    Registered in a config as ``hydra.callbacks.study_summary: {_target_:
    noisydot_sbc.study.StudySummary, docs_dir: docs}``; a relative ``docs_dir`` is taken from
    the directory the command was started in."""

    def __init__(self, docs_dir: str = "docs", alpha: float = STUDY_ALPHA, n_resamples: int = 200,
                 fisher_sims: int = 32) -> None:
        if not isinstance(docs_dir, str) or not docs_dir:
            raise ValueError(f"docs_dir must be a non-empty folder path, got {docs_dir!r}")
        self.docs_dir, self.alpha, self.n_resamples, self.fisher_sims = docs_dir, alpha, n_resamples, fisher_sims

    def on_multirun_end(self, config, **kwargs) -> None:
        import logging

        sweep = Path(str(config.hydra.sweep.dir))
        cwd = Path(str(config.hydra.runtime.cwd)) if config.hydra.get("runtime") else Path.cwd()
        sweep = sweep if sweep.is_absolute() else cwd / sweep
        docs = Path(self.docs_dir)
        docs = docs if docs.is_absolute() else cwd / docs
        out = write_study_report(sweep, docs, alpha=self.alpha, n_resamples=self.n_resamples,
                                 fisher_sims=self.fisher_sims)
        logging.getLogger(__name__).info("study summary: %s", ", ".join(str(p) for p in out["paths"].values()))
