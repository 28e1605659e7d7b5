"""Sweep reading: finished SBC runs -> one row of figures per run, or one Dataset side by side.

One job: summarise finished runs (it writes nothing). :func:`find_runs` lists the ``results.nc``
files of a Hydra multirun or outputs folder, :func:`summarize_run` turns one run into a row of
figures (ECDF p-values, coverage, z-scores, contraction, divergences, cost; failed replicates
left out) and :func:`sweep_summary` lays several runs out on dims (model, prior, quantity).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from .schema import REQUIRED_VARS, load_dataset

__all__ = ["find_runs", "sweep_summary", "summarize_run"]


def find_runs(root, filename: str = "results.nc") -> list[Path]:
    """All ``filename`` files below ``root`` (a Hydra multirun folder or an outputs folder), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root {str(root)!r} is not a folder")
    return sorted(root.rglob(filename))


def sweep_summary(paths) -> xr.Dataset:
    """One Dataset summarising several SBC runs side by side, on dims (model, prior, quantity).

    Built on :func:`summarize_run`. Variables: ``ecdf_p`` (ECDF uniformity p-value per quantity,
    failed replicates left out), ``divergent_fraction``,
    ``failed_fraction``, ``ess_bulk_per_s`` (median over replicates of the smaller bulk ESS of the
    two parameters divided by the fit's wall-time share), ``contraction_w``/``contraction_x``
    (median log-scale contraction), ``abs_corr_log`` (median |posterior corr of the logs|),
    ``multimodal_fraction``, ``n_replicates``.
    """
    rows = []
    for p in paths:
        ds = load_dataset(p)
        run = summarize_run(ds)  # the per-run figures: one implementation
        ok = ~np.asarray(ds["failed"].values, bool)
        n = ds.sizes["replicate"]
        quantities = [str(q) for q in ds["quantity"].values]
        ess = np.asarray(ds["ess_bulk"].values).min(axis=1) if "ess_bulk" in ds else np.full(n, np.nan)
        t = np.asarray(ds["wall_time_share"].values) if "wall_time_share" in ds else np.full(n, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_s = (ess / t)[ok]
        rows.append({
            "model": str(ds.attrs.get("model", "?")), "prior": str(ds.attrs.get("prior", "?")),
            "quantity": quantities,
            "ecdf_p": np.array([run[f"ecdf_p_{q}"] for q in quantities]),
            "divergent_fraction": run["divergent_fraction"],
            "failed_fraction": run["failed"] / run["replicates"],
            "ess_bulk_per_s": float(np.nanmedian(per_s)) if np.isfinite(per_s).any() else np.nan,
            "contraction_w": run.get("contraction_log_w_noise_lvl", np.nan),
            "contraction_x": run.get("contraction_log_x_noise_lvl", np.nan),
            "abs_corr_log": float(np.nanmedian(np.abs(ds["corr_log"].values[ok]))) if "corr_log" in ds and ok.any()
            else np.nan,
            "multimodal_fraction": float(np.mean(ds["multimodal"].values[ok])) if "multimodal" in ds and ok.any()
            else np.nan,
            "n_replicates": run["replicates"],
        })
        ds.close()
    if not rows:
        raise ValueError("paths is empty: no SBC results to summarise")
    order = ["latent", "marginal", "gaussian"]
    models = sorted({r["model"] for r in rows}, key=lambda m: (order.index(m) if m in order else len(order), m))
    priors = sorted({r["prior"] for r in rows})
    quantities = rows[0]["quantity"]
    scalar = ("divergent_fraction", "failed_fraction", "ess_bulk_per_s", "contraction_w", "contraction_x",
              "abs_corr_log", "multimodal_fraction", "n_replicates")
    data = {k: np.full((len(models), len(priors)), np.nan) for k in scalar}
    ecdf = np.full((len(models), len(priors), len(quantities)), np.nan)
    for r in rows:
        i, j = models.index(r["model"]), priors.index(r["prior"])
        for k in scalar:
            data[k][i, j] = r[k]
        if r["quantity"] == quantities:
            ecdf[i, j] = r["ecdf_p"]
    return xr.Dataset(
        {**{k: (("model", "prior"), v) for k, v in data.items()}, "ecdf_p": (("model", "prior", "quantity"), ecdf)},
        coords={"model": models, "prior": priors, "quantity": quantities},
    )


def summarize_run(ds) -> dict:
    """One SBC run (a results Dataset or the path of a results.nc) as a row of figures.

    Keys: ``model``, ``prior``, ``inference``, ``num_ranks``; ``replicates`` (all) and ``failed``;
    per quantity q ``ecdf_p_<q>`` (ECDF uniformity test over the non-failed replicates) and
    ``coverage90_<q>`` (fraction of non-failed replicates whose true value lies in the central
    90% posterior interval, read from the rank: normalised rank (rank + 1/2)/(L + 1) in
    (0.05, 0.95)), with ``coverage90_expected`` its exact value under calibration for this L;
    per parameter p ``z_mean_<p>`` / ``z_sd_<p>`` (mean and sd of the posterior z-scores),
    ``contraction_<p>`` (median posterior contraction) and, when stored, ``contraction_log_<p>``
    (median log-scale contraction); ``divergent_fraction`` (fits with any divergent transition;
    NaN when the inference method declares no divergences); ``seconds_per_fit`` (mean wall-time
    share of a non-failed fit; NaN when not stored). Failed replicates enter only ``failed``."""
    from .. import sbc

    if not isinstance(ds, xr.Dataset):
        ds = load_dataset(ds)
    for v in REQUIRED_VARS:
        if v not in ds.variables:
            raise ValueError(f"ds is missing the variable {v!r}; not an SBC results Dataset")
    L = int(ds.attrs["num_ranks"])
    failed = np.asarray(ds["failed"].values, bool)
    ok = ~failed
    row = {"model": str(ds.attrs.get("model", "")), "prior": str(ds.attrs.get("prior", "")),
           "inference": str(ds.attrs.get("inference", "")), "num_ranks": L,
           "replicates": int(failed.size), "failed": int(failed.sum())}
    quantities = [str(q) for q in ds["quantity"].values]
    ranks = np.asarray(ds["rank"].transpose("replicate", "quantity").values)
    ecdf = sbc.uniformity_tests(ranks, L, failed=failed)["ecdf_p"] if ok.any() else np.full(len(quantities), np.nan)
    def inside(r):
        u = (np.asarray(r) + 0.5) / (L + 1)
        return (u > 0.05) & (u < 0.95)

    row["coverage90_expected"] = float(np.mean(inside(np.arange(L + 1))))
    for j, q in enumerate(quantities):
        row[f"ecdf_p_{q}"] = float(ecdf[j])
        row[f"coverage90_{q}"] = float(np.mean(inside(ranks[ok, j]))) if ok.any() else np.nan

    def median_ok(var, p):
        if var not in ds.variables or not ok.any():
            return np.nan
        v = np.asarray(ds[var].sel(parameter=p).values, dtype=float)[ok]
        return float(np.median(v))

    for p in [str(p) for p in ds["parameter"].values]:
        if "z_score" in ds.variables and ok.any():
            z = np.asarray(ds["z_score"].sel(parameter=p).values, dtype=float)[ok]
            row[f"z_mean_{p}"], row[f"z_sd_{p}"] = float(np.mean(z)), float(np.std(z, ddof=1)) if z.size > 1 else np.nan
        else:
            row[f"z_mean_{p}"] = row[f"z_sd_{p}"] = np.nan
        row[f"contraction_{p}"] = median_ok("contraction", p)
        if "contraction_log" in ds.variables:
            row[f"contraction_log_{p}"] = median_ok("contraction_log", p)
    row["divergent_fraction"] = (float(np.mean(np.asarray(ds["diverging"].values)[ok] > 0))
                                 if "diverging" in ds.variables and ok.any() else np.nan)
    row["seconds_per_fit"] = (float(np.mean(np.asarray(ds["wall_time_share"].values, dtype=float)[ok]))
                              if "wall_time_share" in ds.variables and ok.any() else np.nan)
    return row
