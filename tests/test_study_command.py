"""The one command of the study, end to end on its tiny configuration:
``python run.py -m experiment=study_tiny`` (2 cells: the Gaussian approximation by NUTS and by
quadrature, strong prior, one design M = 2, N = 30, 40 replicates each) runs both SBC cells
through Hydra's multirun and ends with the summary callback, which writes the report into the
sweep folder: results.md, results.csv (a row per cell, a verdict) and the figures.

Two variants of the same command, the same checks: by default with ``sbc.reference=none`` (about
35 s on an idle 2-core machine, nearly all of it compilation); marked slow, the command exactly as
the study runs it, where the Gaussian-NUTS cell also computes its exact reference (a quadrature of
the exact model per replicate: another ~40 s, its compilation), and its discrepancies must reach
the summary table and figure. The reference itself is tested by test_tasks_sbc.py
(test_reference_to_the_exact_posterior) and its part of the report by test_study.py."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CELLS = {"gaussian-nuts-strong-study_m2-N30-seed0": "nuts", "gaussian-quadrature-strong-study_m2-N30-seed0": "quadrature"}
VARIANTS = [
    pytest.param(["sbc.reference=none"], id="no_reference"),
    pytest.param([], id="exact_reference", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=VARIANTS)
def tiny_study(request, tmp_path_factory):
    overrides = request.param
    sweep = tmp_path_factory.mktemp("study_tiny") / "sweep"
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "experiment=study_tiny",
                           f"hydra.sweep.dir={sweep}", *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # a command-line override other than the swept groups names the run folders (config.yaml: run_suffix)
    suffix = "".join("," + o for o in sorted(overrides))
    return sweep, {name + suffix: inference for name, inference in CELLS.items()}, not overrides


def test_every_cell_ran_in_its_own_readable_folder(tiny_study):
    sweep, cells, _ = tiny_study
    # (.jax_cache: the compilation cache the study's jobs share)
    folders = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name not in ("report", ".jax_cache"))
    assert folders == sorted(cells)
    for name in cells:
        assert (sweep / name / "results.nc").is_file()


def test_summary_table_has_a_row_per_cell_with_a_verdict(tiny_study):
    sweep, _, with_reference = tiny_study
    report = sweep / "report"
    df = pd.read_csv(report / "results.csv")
    assert len(df) == 2
    assert sorted(df["inference"]) == ["nuts", "quadrature"] and set(df["model"]) == {"gaussian"}
    assert set(df["prior"]) == {"strong"} and set(df["n_obs"]) == {30} and set(df["n_inputs"]) == {2}
    assert set(df["replicates"]) == {40}
    # the verdict logic: miscalibrated exactly when the smallest Holm-adjusted ECDF p is <= alpha (0.05)
    for _, row in df.iterrows():
        assert row["verdict"] in ("calibrated", "miscalibrated")
        assert math.isfinite(row["min_holm_p"])
        assert (row["verdict"] == "miscalibrated") == (row["min_holm_p"] <= 0.05)
        quantities = [c[len("ecdf_p_"):] for c in df.columns if c.startswith("ecdf_p_")]
        assert {"x_noise_lvl", "w_noise_lvl"} <= set(quantities)
        holm = {q: row["holm_p_" + q] for q in quantities}
        assert min(holm.values()) == row["min_holm_p"] and row["worst_quantity"] in quantities
        for q in quantities:  # Holm over the 2 cells x Q tests: adjusted p in [raw p, 1], at most 2Q x raw p
            raw = row["ecdf_p_" + q]
            assert raw <= holm[q] <= min(1.0, 2 * len(quantities) * raw) + 1e-12
    ref = [c for c in df.columns if c.startswith("ref_w1_log_")]
    if with_reference:  # the Gaussian-NUTS cell's discrepancies to the exact posterior, none for quadrature
        by = df.set_index("inference")
        assert len(ref) == 2 and np.isfinite(by.loc["nuts", ref].to_numpy(float)).all()
        assert np.isnan(by.loc["quadrature", ref].to_numpy(float)).all()
    else:
        assert ref == []


def test_summary_report_and_figures_written_not_into_docs(tiny_study):
    sweep, _, with_reference = tiny_study
    report = sweep / "report"
    md = (report / "results.md").read_text()
    assert "gaussian/nuts" in md and "gaussian/quadrature" in md
    assert "calibrated" in md
    figures = list((report / "figures").glob("*.png"))
    assert figures and all(f.stat().st_size > 1000 for f in figures)
    assert (report / "figures" / "study_reference.png").is_file() == with_reference
