"""The study's report: the table, findings and figures -> ``docs/results.md``, ``results.csv``, ``figures/``.

One job: put the study's findings into words and files. It runs no posterior fit and computes
no statistic of its own: :func:`write_study_report` reads every cell's ``results.nc`` below a
sweep folder, builds the tables (:mod:`.table`, with the power of :mod:`.power`), states the
findings as plain sentences (:func:`findings`), formats the markdown report and writes it with
the CSV of the whole table and the ECDF figures (``plots``).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..diagnostics import THRESHOLDS
from ..models import PARAMS
from .power import DEFECTS, NO_DEFECT, _col, control_samplers
from .table import (
    STUDY_ALPHA,
    _design_label,
    add_power,
    cell_identity,
    identifiability_table,
    select_control,
    study_table,
)

__all__ = ["findings", "write_study_report"]

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
                 "divergent fits", "s per fit", "cell fit time (s)", "job wall (s)"]
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
               _fmt(r["divergent_fraction"], ".1%"), _fmt(r["seconds_per_fit"], ".2g"), _fmt(r["cell_seconds"], ".0f"),
               _fmt(r.get("job_seconds", np.nan), ".0f")]
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
    wall = df.attrs.get("study_wall_seconds", np.nan)
    if np.isfinite(wall):
        jobs = df["job_seconds"].to_numpy(dtype=float) if "job_seconds" in df else np.array([np.nan])
        out.append(f"Wall time: the study's jobs ran for {wall / 60:.0f} min from the first job's start to the last "
                   f"chunk ({len(df)} jobs, {np.nansum(jobs) / 60:.0f} job-minutes: each job's wall time from its start "
                   "to its last chunk, compile, simulation, fits, test quantities and reference included).")
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


def job_span(results_path) -> tuple[float, float]:
    """(start, end) of the run that wrote ``results_path``, in seconds since the epoch: the mtime of
    its ``chunks/config_fingerprint.txt`` (written when the run first started) and of its last chunk
    file (each is written once, when its replicates are done; results.nc is rewritten whenever the
    command is rerun). A run resumed after an interruption counts the pause too. NaN where a file
    is missing."""
    p = Path(results_path)
    fp = p.parent / "chunks" / "config_fingerprint.txt"
    chunks = list((p.parent / "chunks").glob("chunk_*.nc"))
    start = fp.stat().st_mtime if fp.exists() else np.nan
    end = max(c.stat().st_mtime for c in chunks) if chunks else np.nan
    return float(start), float(end)


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
    spans = [job_span(p) for p in paths]
    df["job_seconds"] = [b - a for a, b in spans]
    starts, ends = [a for a, _ in spans if np.isfinite(a)], [b for _, b in spans if np.isfinite(b)]
    df.attrs["study_wall_seconds"] = float(max(ends) - min(starts)) if starts and ends else np.nan
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
