"""Calibration and diagnostics plots of an SBC results Dataset (see ``docs/sbc.md``).

Each function takes the Dataset built by :mod:`noisydot_sbc.results` and returns a
``matplotlib.figure.Figure``. Figures are made without pyplot (``Figure()`` with the Agg canvas),
so nothing here changes the global backend or leaks open figures; save with ``fig.savefig``.
Failed replicates (``failed == True``) are left out of every panel, and every figure's title
says how many were left out. Diagnostics panels show what the inference method declared (no
divergence panel without declared divergences); warning lines come from
``diagnostics.THRESHOLDS``.
"""
from __future__ import annotations

import textwrap

import numpy as np
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from . import sbc
from .diagnostics import THRESHOLDS

__all__ = ["plot_ecdf", "plot_rank_histograms", "plot_zscore_contraction", "plot_diagnostics", "plot_ppc",
           "plot_degeneracy_map", "plot_sweep_summary", "plot_study_ecdf", "plot_reference_discrepancy",
           "plot_reference"]

BAND_LABEL = "{:.0%} simultaneous band"


def _figure(n_panels: int, ncols: int | None = None, panel_size=(3.6, 3.0)):
    ncols = min(n_panels, 3) if ncols is None else ncols
    nrows = int(np.ceil(n_panels / ncols))
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n_panels)]
    return fig, axes


def _check(ds, needed):
    missing = [v for v in needed if v not in ds.variables]
    if missing:
        raise ValueError(f"ds is missing the variable(s) {missing} needed for this plot")


def _ok(ds) -> np.ndarray:
    ok = ~np.asarray(ds["failed"].values, bool) if "failed" in ds.variables else np.ones(ds.sizes["replicate"], bool)
    if not ok.any():
        raise ValueError("ds: every replicate failed; nothing to plot")
    return ok


def _n_failed_note(ok) -> str:
    n_failed = int((~ok).sum())
    return f", {n_failed} failed excluded" if n_failed else ""


def _fmt_p(p: float) -> str:
    return "< 1e-15" if p < 1e-15 else f"= {p:.2g}"


def _figure_legend(fig, ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8, frameon=False)


def _num_ranks(ds) -> int:
    if "num_ranks" not in ds.attrs:
        raise ValueError("ds.attrs lacks 'num_ranks' (L)")
    return int(ds.attrs["num_ranks"])


def _ecdf_on_grid(ranks: np.ndarray, num_ranks: int) -> tuple[np.ndarray, np.ndarray]:
    """ECDF of ranks at every cell boundary z = i/(L+1), i = 0..L+1 (fraction of ranks < i)."""
    i = np.arange(num_ranks + 2)
    return i / (num_ranks + 1), np.searchsorted(np.sort(ranks), i, side="left") / ranks.size


def plot_ecdf(ds, difference: bool = True, split_divergent: bool = False, alpha: float = 0.05) -> Figure:
    """Rank ECDF (or ECDF minus the uniform CDF) per quantity with the simultaneous ``1 - alpha``
    band of Säilynoja, Bürkner & Vehtari (2022). With ``split_divergent`` a second curve shows the
    fits without divergent transitions only (its own band is not drawn). Panel titles give the
    ECDF-test p-value. An inference method that declares no divergences (no ``diverging``
    variable, e.g. quadrature) has nothing to split: ``split_divergent`` then draws one curve."""
    _check(ds, ["rank"])
    split_divergent = split_divergent and "diverging" in ds.variables
    ok = _ok(ds)
    num_ranks = _num_ranks(ds)
    quantities = [str(q) for q in ds["quantity"].values]
    fig, axes = _figure(len(quantities))
    ranks_all = np.asarray(ds["rank"].values)[ok]
    n = ranks_all.shape[0]
    band = sbc.ecdf_simultaneous_band(n, num_ranks, alpha=alpha)
    groups = [("all fits", ok)]
    if split_divergent:
        nodiv = ok & (np.asarray(ds["diverging"].values) == 0)
        groups.append((f"no divergences (n={int(nodiv.sum())})", nodiv))
    colors = sns.color_palette("deep", 3)
    for q, (ax, name) in enumerate(zip(axes, quantities)):
        zb = np.concatenate([[0.0], band.z, [1.0]])
        lo = np.concatenate([[0.0], band.lower, [1.0]])
        hi = np.concatenate([[0.0], band.upper, [1.0]])
        if difference:
            lo, hi = lo - zb, hi - zb
        ax.fill_between(zb, lo, hi, step="post", color="0.85", label=BAND_LABEL.format(1 - alpha))
        ax.plot(zb, lo, drawstyle="steps-post", color="0.5", lw=0.8)
        ax.plot(zb, hi, drawstyle="steps-post", color="0.5", lw=0.8)
        for k, (label, mask) in enumerate(groups):
            r = np.asarray(ds["rank"].values)[mask, q]
            if r.size == 0:
                continue
            z, f = _ecdf_on_grid(r, num_ranks)
            ax.plot(z, f - z if difference else f, drawstyle="steps-post", color=colors[k], lw=1.4,
                    label=label if k else f"all fits (n={n})")
        if not difference:
            ax.plot([0, 1], [0, 1], color="k", lw=0.6, ls=":")
        p = sbc.ecdf_uniformity(ranks_all[:, q], num_ranks).p_value
        ax.set_title(f"{name}\nECDF test p {_fmt_p(p)}", fontsize=10)
        ax.set_xlabel("normalised rank  z = rank/(L+1)")
        ax.set_ylabel("ECDF − z" if difference else "ECDF")
        ax.set_xlim(0, 1)
    _figure_legend(fig, axes[0])
    fig.suptitle(f"SBC rank ECDF{' difference' if difference else ''}  (L={num_ranks}, "
                 f"{n} replicates{_n_failed_note(ok)})", fontsize=11)
    return fig


def plot_rank_histograms(ds, n_bins: int | None = None, band: float = 0.99) -> Figure:
    """Rank histogram per quantity with the pointwise binomial ``band`` (99%) range of bin counts
    under uniformity (Talts et al. 2018). ``n_bins`` must divide L+1 (default: see
    :func:`noisydot_sbc.sbc.chi2_bins`)."""
    _check(ds, ["rank"])
    ok = _ok(ds)
    num_ranks = _num_ranks(ds)
    ranks = np.asarray(ds["rank"].values)[ok]
    n = ranks.shape[0]
    if n_bins is None:
        try:
            n_bins = sbc.chi2_bins(num_ranks, n, min_expected=5)
        except ValueError:  # few replicates: the coarsest split of 0..L that still shows shape
            n_bins = min(b for b in range(2, num_ranks + 2) if (num_ranks + 1) % b == 0)
    if (num_ranks + 1) % n_bins:
        raise ValueError(f"n_bins={n_bins} must divide L+1={num_ranks + 1}")
    per = (num_ranks + 1) // n_bins
    lo, hi = stats.binom.ppf([(1 - band) / 2, (1 + band) / 2], n, 1.0 / n_bins)
    quantities = [str(q) for q in ds["quantity"].values]
    fig, axes = _figure(len(quantities))
    edges = np.arange(n_bins + 1) * per - 0.5
    for q, (ax, name) in enumerate(zip(axes, quantities)):
        ax.axhspan(lo, hi, color="0.85", label=f"{band:.0%} binomial band", zorder=0)
        ax.axhline(lo, color="0.5", lw=0.8)
        ax.axhline(hi, color="0.5", lw=0.8)
        ax.axhline(n / n_bins, color="0.3", lw=0.8, ls="--", label="expected")
        ax.hist(ranks[:, q], bins=edges, color=sns.color_palette("deep")[0], edgecolor="white", zorder=2)
        p = sbc.chi2_uniformity(ranks[:, q], num_ranks, n_bins).p_value
        ax.set_title(f"{name}\nχ² p {_fmt_p(p)}", fontsize=10)
        ax.set_xlabel(f"rank (0..{num_ranks}, {n_bins} bins)")
        ax.set_ylabel("replicates")
    _figure_legend(fig, axes[0])
    fig.suptitle(f"SBC rank histograms ({n} replicates{_n_failed_note(ok)})", fontsize=11)
    return fig


def plot_zscore_contraction(ds) -> Figure:
    """Posterior z-score against posterior contraction per parameter (Schad, Betancourt &
    Vasishth 2021). Good: contraction near 1, |z| mostly < 2; fits with divergences in orange."""
    _check(ds, ["z_score", "contraction"])
    ok = _ok(ds)
    params = [str(p) for p in ds["parameter"].values]
    fig, axes = _figure(len(params))
    div = np.asarray(ds["diverging"].values)[ok] > 0 if "diverging" in ds.variables else np.zeros(ok.sum(), bool)
    colors = sns.color_palette("deep", 2)
    for j, (ax, name) in enumerate(zip(axes, params)):
        z = np.asarray(ds["z_score"].values)[ok, j]
        c = np.asarray(ds["contraction"].values)[ok, j]
        ax.axhspan(-2, 2, color="0.92", zorder=0, label="|z| < 2")
        ax.scatter(c[~div], z[~div], s=10, alpha=0.6, color=colors[0], label="no divergences")
        if div.any():
            ax.scatter(c[div], z[div], s=14, alpha=0.8, color=colors[1], marker="x", label="with divergences")
        ax.axhline(0, color="0.4", lw=0.6)
        ax.set_xlim(min(-0.05, float(np.nanmin(c)) - 0.05), 1.05)
        ax.set_xlabel("contraction  1 − σ²_post / σ²_prior")
        ax.set_ylabel("posterior z-score")
        ax.set_title(f"{name}  (|z| > 2: {np.mean(np.abs(z) > 2):.1%})", fontsize=10)
    _figure_legend(fig, axes[0])
    fig.suptitle(f"Posterior z-score vs contraction ({int(ok.sum())} replicates{_n_failed_note(ok)})", fontsize=11)
    return fig


def _declared_replicate_vars(ds) -> list[str]:
    """Replicate-level statistics a method declared: stored with ``level`` "replicate"
    (``Diagnostics.attrs()``), or with a ``description`` only and not a derived diagnostic."""
    from .diagnostics import DERIVED

    out = []
    for v in ds.data_vars:
        a = ds[v].attrs
        if ds[v].dims != ("replicate",) or ds[v].dtype.kind not in "fiub" or v in DERIVED:
            continue
        if a.get("level") == "replicate" or ("description" in a and "level" not in a):
            out.append(str(v))
    return out


def has_diagnostics(ds) -> bool:
    """Whether :func:`plot_diagnostics` has anything to draw for ``ds``."""
    return any(v in ds.variables for v in DIAGNOSTIC_PANELS) or bool(_declared_replicate_vars(ds))


DIAGNOSTIC_PANELS = ("diverging", "r_hat", "ess_bulk", "ess_tail", "bfmi")


def plot_diagnostics(ds) -> Figure:
    """Distributions over replicates of the diagnostics present: divergences, R-hat, bulk and
    tail ESS (per parameter), E-BFMI, with the warning thresholds of
    ``diagnostics.THRESHOLDS`` (R-hat 1.01, ESS 400, E-BFMI 0.3), and one panel per declared
    replicate-level statistic (e.g. a quadrature posterior's ``error_estimate``; bool ones as
    the fraction True). Only what is stored is drawn; a Dataset with none of these raises."""
    ok = _ok(ds)
    params = [str(p) for p in ds["parameter"].values]
    pal = sns.color_palette("deep", max(2, len(params)))
    panels = [v for v in DIAGNOSTIC_PANELS if v in ds.variables]
    panels += _declared_replicate_vars(ds)
    if not panels:
        raise ValueError("ds holds no diagnostics to plot (none of diverging, r_hat, ess_bulk, ess_tail, bfmi, "
                         "nor a declared replicate-level statistic)")
    fig, axes = _figure(len(panels), ncols=min(3, len(panels)))
    labels = {"r_hat": "R-hat (rank-normalised split)", "ess_bulk": "bulk ESS", "ess_tail": "tail ESS"}
    for ax, var in zip(axes, panels):
        if var == "diverging":
            d = np.asarray(ds["diverging"].values)[ok]
            ax.hist(d, bins=np.arange(d.max() + 2) - 0.5 if d.max() < 30 else 30, color=pal[0], edgecolor="white")
            ax.set_title(f"divergences per fit ({np.mean(d > 0):.1%} of fits have any)", fontsize=10)
            ax.set_xlabel("divergent transitions")
            ax.set_ylabel("replicates")
        elif var in labels:
            thr = THRESHOLDS[var]
            vals = np.asarray(ds[var].transpose("replicate", "parameter").values)[ok]
            for j, name in enumerate(params):
                v = vals[:, j]
                v = v[np.isfinite(v)]
                if v.size:
                    sns.histplot(v, ax=ax, color=pal[j], label=name, element="step", fill=False, bins=30)
            ax.axvline(thr, color="firebrick", ls="--", lw=1, label=f"threshold {thr:g}")
            n_undef = int(np.sum(~np.isfinite(vals)))
            ax.set_title(labels[var] + (f" ({n_undef} undefined)" if n_undef else ""), fontsize=10)
            ax.set_xlabel(var)
            ax.set_ylabel("replicates")
            ax.legend(fontsize=7)
        elif var == "bfmi":
            b = np.asarray(ds["bfmi"].values)[ok].ravel()
            sns.histplot(b[np.isfinite(b)], ax=ax, bins=30, color=pal[0])
            ax.axvline(THRESHOLDS["bfmi"], color="firebrick", ls="--", lw=1, label=f"threshold {THRESHOLDS['bfmi']:g}")
            ax.set_title("E-BFMI per chain", fontsize=10)
            ax.set_xlabel("E-BFMI")
            ax.set_ylabel("chains")
            ax.legend(fontsize=7)
        else:
            v = np.asarray(ds[var].values)[ok]
            desc = ds[var].attrs.get("description", var)
            if v.dtype == bool:
                ax.bar(["False", "True"], [int((~v).sum()), int(v.sum())], color=pal[0])
                ax.set_title(f"{var}: {np.mean(v):.1%} True", fontsize=10)
            else:
                n_bad = int(np.sum(~np.isfinite(v.astype(float))))
                v = v[np.isfinite(v)].astype(float)
                if v.size:
                    sns.histplot(v, ax=ax, bins=30, color=pal[0])
                ax.set_title(var + (f" ({n_bad} not finite, not drawn)" if n_bad else ""), fontsize=10)
            ax.set_xlabel(textwrap.fill(str(desc), 45), fontsize=7)
            ax.set_ylabel("replicates")
    inference = ds.attrs.get("inference", "")
    fig.suptitle(f"{'Inference' if not inference else str(inference)} diagnostics over {int(ok.sum())} fits"
                 f"{_n_failed_note(ok)}", fontsize=11)
    return fig


def plot_ppc(ds) -> Figure:
    """Posterior predictive check of a fit (Dataset from ``results.build_ppc_dataset``).

    Left: density of the standardised residuals, observed vs replicated (log scale, so the tails
    show). Middle: fraction of observations beyond k sd, observed vs the replicated 90% interval.
    Right: PIT histogram (uniform when the predictive distribution fits each observation).
    """
    _check(ds, ["z_obs", "z_rep", "pit", "obs_exceed", "rep_exceed_lo", "rep_exceed_hi"])
    fig, (ax0, ax1, ax2) = _figure(3, panel_size=(4.0, 3.2))
    z_obs = np.asarray(ds["z_obs"].values)
    z_rep = np.asarray(ds["z_rep"].values)
    lim = max(6.0, float(np.nanmax(np.abs(z_obs))) + 0.5)
    bins = np.linspace(-lim, lim, 61)
    rep_hist = np.stack([np.histogram(r, bins=bins, density=True)[0] for r in z_rep])
    centres = 0.5 * (bins[1:] + bins[:-1])
    lo, hi = np.quantile(rep_hist, [0.05, 0.95], axis=0)
    ax0.fill_between(centres, np.maximum(lo, 1e-5), np.maximum(hi, 1e-5), step="mid", alpha=0.35,
                     color="C0", label="replicated 90%")
    obs_hist = np.histogram(z_obs, bins=bins, density=True)[0]
    ax0.step(centres, np.maximum(obs_hist, 1e-5), where="mid", color="k", lw=1.2, label="observed")
    ax0.set_yscale("log")
    ax0.set_ylim(bottom=1e-4)
    ax0.set_xlabel("standardised residual (y - E y) / sd")
    ax0.set_ylabel("density")
    ax0.set_title("residuals")
    ax0.legend(fontsize=8)
    thr = np.asarray(ds["threshold"].values)
    ax1.fill_between(thr, np.maximum(ds["rep_exceed_lo"].values, 1e-5), np.maximum(ds["rep_exceed_hi"].values, 1e-5),
                     alpha=0.35, color="C0", label="replicated 90%")
    ax1.plot(thr, np.maximum(ds["obs_exceed"].values, 1e-5), "ko-", ms=4, label="observed")
    ax1.set_yscale("log")
    ax1.set_xlabel("k (sd)")
    ax1.set_ylabel("fraction with |residual| > k")
    ax1.set_title("tails")
    ax1.legend(fontsize=8)
    pit = np.asarray(ds["pit"].values)
    n_bins = int(np.clip(np.sqrt(pit.size), 5, 20))
    ax2.hist(pit, bins=n_bins, range=(0, 1), color="C1", alpha=0.8, edgecolor="white")
    expect = pit.size / n_bins
    lo, hi = stats.binom.ppf([0.005, 0.995], pit.size, 1 / n_bins)
    ax2.axhspan(lo, hi, color="grey", alpha=0.25, label="99% band")
    ax2.axhline(expect, color="k", lw=0.8)
    ax2.set_xlabel("PIT  P(y_rep < y)")
    ax2.set_ylabel("observations")
    ax2.set_title("PIT")
    ax2.legend(fontsize=8)
    fig.suptitle(f"posterior predictive check, model {ds.attrs.get('model', '?')}")
    return fig


def plot_degeneracy_map(ds, value: str = "contraction_w", row: str = "x_spread", col: str = "ratio") -> Figure:
    """Heatmaps of an identifiability measure over two design features, one panel per facet.

    ``ds`` comes from the degeneracy task: variables on dims (facet, ``row``, ``col``), e.g.
    ``contraction_w`` (posterior contraction of σ_w) or ``log10_condition`` (FIM condition number).
    """
    _check(ds, [value])
    da = ds[value]
    if set(da.dims) != {"facet", row, col}:
        raise ValueError(f"ds['{value}'] must have dims (facet, {row}, {col}), got {da.dims}")
    facets = list(ds["facet"].values)
    fig, axes = _figure(len(facets), ncols=min(len(facets), 3), panel_size=(4.2, 3.4))
    vals = da.transpose("facet", row, col).values
    finite = vals[np.isfinite(vals)]
    if finite.size == 0:
        raise ValueError(f"ds['{value}'] has no finite values to plot")
    vmin, vmax = float(finite.min()), float(finite.max())  # blank cells: infinite or undefined
    for ax, f, v in zip(axes, facets, vals):
        sns.heatmap(v, ax=ax, vmin=vmin, vmax=vmax, annot=True, fmt=".2g", annot_kws={"fontsize": 7},
                    cmap="viridis", xticklabels=[f"{c:g}" for c in ds[col].values],
                    yticklabels=[f"{r:g}" for r in ds[row].values], cbar=ax is axes[-1])
        ax.set_xlabel(ds[col].attrs.get("long_name", col))
        ax.set_ylabel(ds[row].attrs.get("long_name", row))
        ax.set_title(str(f), fontsize=9)
    title = ds[value].attrs.get("long_name", value)
    if not np.isfinite(vals).all():
        title += "  (blank: infinite or undefined)"
    fig.suptitle(title)
    return fig


def plot_sweep_summary(ds) -> Figure:
    """Side-by-side comparison of SBC runs (Dataset from ``results.sweep_summary``): calibration
    (ECDF-test p-value per quantity, log scale), cost (bulk ESS per second) and degeneracy
    (median |posterior correlation| of log σ_x and log σ_w, and contraction of log σ_w)."""
    _check(ds, ["ecdf_p", "ess_bulk_per_s", "abs_corr_log", "contraction_w"])
    fig, axes = _figure(4, ncols=2, panel_size=(5.0, 3.4))
    models = [str(m) for m in ds["model"].values]
    priors = [str(p) for p in ds["prior"].values]
    width = 0.8 / max(1, len(priors))
    xs = np.arange(len(models))
    p = np.asarray(ds["ecdf_p"].values)  # (model, prior, quantity)
    ax = axes[0]
    for j, pr in enumerate(priors):
        for qi, q in enumerate(ds["quantity"].values):
            ax.scatter(xs + (j - (len(priors) - 1) / 2) * width, np.maximum(p[:, j, qi], 1e-16),
                       marker="os^Dv"[qi % 5], color=f"C{j}", label=f"{pr}: {q}", s=22)
    ax.axhline(0.05, color="k", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(xs, models)
    ax.set_ylabel("ECDF uniformity p-value")
    ax.set_title("calibration (below dashed line: miscalibrated)")
    ax.legend(fontsize=6, ncols=2)
    for ax, var, label in zip(axes[1:], ["ess_bulk_per_s", "abs_corr_log", "contraction_w"],
                              ["bulk ESS per second (median)", "|corr(log σx, log σw)| (median)",
                               "contraction of log σw (median)"]):
        vals = np.asarray(ds[var].values)
        for j, pr in enumerate(priors):
            ax.bar(xs + (j - (len(priors) - 1) / 2) * width, vals[:, j], width=width, color=f"C{j}", label=pr)
        ax.set_xticks(xs, models)
        ax.set_ylabel(label)
        ax.legend(fontsize=7, title="prior", title_fontsize=7)
    axes[1].set_yscale("log")
    axes[1].set_title("cost")
    axes[2].set_title("degeneracy")
    axes[3].set_title("identifiability of σw")
    return fig


# --------------------------------------------------------------------------- the study
def _ecdf_diff_panel(ax, ds, alpha: float, colors, quantities) -> tuple[int, float]:
    """ECDF − z of every quantity of one cell on ``ax`` with the cell's simultaneous band;
    returns (replicates tested, largest |value| of band and curves) for the shared y-range."""
    ok = _ok(ds)
    num_ranks = _num_ranks(ds)
    ranks = np.asarray(ds["rank"].transpose("replicate", "quantity").values)[ok]
    n = ranks.shape[0]
    band = sbc.ecdf_simultaneous_band(n, num_ranks, alpha=alpha)
    zb = np.concatenate([[0.0], band.z, [1.0]])
    lo = np.concatenate([[0.0], band.lower_diff, [0.0]])
    hi = np.concatenate([[0.0], band.upper_diff, [0.0]])
    ax.fill_between(zb, lo, hi, step="post", color="0.88", label=BAND_LABEL.format(1 - alpha))
    names = [str(q) for q in ds["quantity"].values]
    m = float(max(np.max(np.abs(lo)), np.max(np.abs(hi))))
    for q in quantities:
        if q not in names:
            continue
        z, f = _ecdf_on_grid(ranks[:, names.index(q)], num_ranks)
        ax.plot(z, f - z, drawstyle="steps-post", color=colors[quantities.index(q)], lw=1.2, label=q)
        m = max(m, float(np.max(np.abs(f - z))))
    ax.axhline(0, color="0.4", lw=0.5)
    ax.set_xlim(0, 1)
    return n, m


def plot_study_ecdf(cells: dict, alpha: float = 0.05, p_values: dict | None = None, title: str = "",
                    rows: list | None = None, cols: list | None = None) -> Figure:
    """The study's grid of rank-ECDF differences: ``cells`` maps (row label, column label) ->
    results Dataset (rows: model/inference, columns: regime = prior x design). Each panel shows
    ECDF − z of every quantity (one colour per quantity) inside that cell's simultaneous
    ``1 - alpha`` band (its own replicate count); ``p_values`` maps the same keys to a text (e.g.
    the cell's smallest Holm-adjusted p) shown in the panel title. ``rows``/``cols``: label order
    (default: first appearance in ``cells``). Empty grid positions are blank."""
    if not cells:
        raise ValueError("cells is empty: nothing to plot")
    rows = list(dict.fromkeys(k[0] for k in cells)) if rows is None else list(rows)
    cols = list(dict.fromkeys(k[1] for k in cells)) if cols is None else list(cols)
    missing = [k for k in cells if k[0] not in rows or k[1] not in cols]
    if missing:
        raise ValueError(f"rows/cols do not name the cell(s) {missing}")
    quantities = list(dict.fromkeys(str(q) for ds in cells.values() for q in ds["quantity"].values))
    colors = sns.color_palette("deep", len(quantities))
    fig = Figure(figsize=(2.7 * len(cols) + 0.6, 2.1 * len(rows) + 1.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(cols), squeeze=False, sharex=True, sharey=True)
    ymax, first = 0.0, None
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            if (r, c) not in cells:
                ax.set_axis_off()
                continue
            n, m = _ecdf_diff_panel(ax, cells[(r, c)], alpha, colors, quantities)
            ymax = max(ymax, m)
            first = first or ax
            extra = f", {p_values[(r, c)]}" if p_values and (r, c) in p_values else ""
            ax.set_title(f"S={n}{extra}", fontsize=8)
            if j == 0 or (r, cols[j - 1]) not in cells:
                ax.set_ylabel(f"{r}\nECDF − z", fontsize=8)
            if i == len(rows) - 1 or (rows[i + 1], c) not in cells:
                ax.set_xlabel("z = rank/(L+1)", fontsize=8)
            ax.tick_params(labelsize=7, labelleft=True, labelbottom=True)
    for j, c in enumerate(cols):
        axes[0, j].annotate(textwrap.fill(c, 30), (0.5, 1.22), xycoords="axes fraction", ha="center",
                            va="bottom", fontsize=8, fontweight="bold")
    ymax = min(ymax, 1.0)
    axes[0, 0].set_ylim(-1.05 * ymax, 1.05 * ymax)
    handles, labels = first.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=max(1, min(len(labels), int(1.6 * len(cols)))),
               fontsize=8, frameon=False)
    text = f"{title + ': ' if title else ''}SBC rank ECDF − z per cell (grey: {1 - alpha:.0%} simultaneous band)"
    fig.suptitle(textwrap.fill(text, max(40, int(16 * len(cols)))), fontsize=10)
    return fig


def plot_reference_discrepancy(df) -> Figure:
    """Discrepancy to the exact posterior per cell (a study table, ``study.study_table``): median
    Wasserstein-1 distance on the log scale (``ref_w1_log_<p>``) and median |median shift| in
    exact-posterior sds (``ref_median_shift_<p>``), one bar per cell and parameter; a row label
    column ``cell`` names the cells."""
    params = [c[len("ref_w1_log_"):] for c in df.columns if c.startswith("ref_w1_log_")]
    if not params or "cell" not in df.columns:
        raise ValueError("df needs a 'cell' column and ref_w1_log_<parameter> columns (no reference stored)")
    has = np.isfinite(df[[f"ref_w1_log_{p}" for p in params]].to_numpy(dtype=float)).any(axis=1)
    sub = df[has]
    if sub.empty:
        raise ValueError("df: no cell has a finite reference discrepancy")
    labels = list(sub["cell"])
    fig = Figure(figsize=(11, 0.45 * len(labels) + 1.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    ys = np.arange(len(labels))
    h = 0.8 / len(params)
    colors = sns.color_palette("deep", len(params))
    for ax, stem, title in zip(axes, ["ref_w1_log_", "ref_median_shift_"],
                               ["Wasserstein-1 to the exact posterior (log scale, median)",
                                "|median shift| in exact-posterior sds (median)"]):
        for k, p in enumerate(params):
            col = stem + p
            vals = sub[col].to_numpy(dtype=float) if col in sub else np.full(len(sub), np.nan)
            ax.barh(ys + (k - (len(params) - 1) / 2) * h, np.nan_to_num(vals), height=h, color=colors[k], label=p)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", color="0.9")
        ax.set_axisbelow(True)
    axes[1].axvline(0.3, color="k", ls="--", lw=0.8, label="0.3 sd (power control)")
    axes[0].set_yticks(ys, labels)
    axes[0].invert_yaxis()
    _figure_legend(fig, axes[1])
    fig.suptitle("Discrepancy to the exact posterior per cell", fontsize=10)
    return fig


def plot_reference(ds) -> Figure:
    """One run's discrepancy to the exact posterior, per parameter: ECDFs over the non-failed
    replicates of the Wasserstein-1 distance on the log scale (``ref_w1_log``), the median shift
    in exact-posterior sds (``ref_median_shift``) and, when stored, the sd ratio
    (``ref_sd_ratio``) and KL divergence (``ref_kl_log``); every variable has dims
    (replicate, parameter)."""
    _check(ds, ["ref_w1_log", "ref_median_shift"])
    ok = _ok(ds)
    names = [v for v in ("ref_w1_log", "ref_median_shift", "ref_sd_ratio", "ref_kl_log") if v in ds.variables]
    labels = {"ref_w1_log": "W1 on the log scale", "ref_median_shift": "median shift (exact-posterior sds)",
              "ref_sd_ratio": "sd ratio (approximate / exact)", "ref_kl_log": "KL divergence (log scale)"}
    ref_line = {"ref_median_shift": 0.0, "ref_sd_ratio": 1.0}
    params = [str(p) for p in ds["parameter"].values]
    fig, axes = _figure(len(names), ncols=len(names), panel_size=(3.4, 2.9))
    colors = sns.color_palette("deep", len(params))
    for ax, v in zip(axes, names):
        for k, p in enumerate(params):
            vals = np.asarray(ds[v].sel(parameter=p).values, dtype=float)[ok]
            vals = np.sort(vals[np.isfinite(vals)])
            if vals.size:
                ax.step(vals, np.arange(1, vals.size + 1) / vals.size, where="post", color=colors[k],
                        label=f"{p} (median {np.median(vals):.3g})")
        if v in ref_line:
            ax.axvline(ref_line[v], color="k", lw=0.6, ls=":")
        ax.set_xlabel(labels[v], fontsize=9)
        ax.set_ylabel("fraction of replicates")
        ax.legend(fontsize=7)
    fig.suptitle(f"Discrepancy to the exact posterior ({int(ok.sum())} replicates{_n_failed_note(ok)})", fontsize=10)
    return fig
