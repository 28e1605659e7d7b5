"""The one command of the study, end to end on its tiny configuration:
``python run.py -m experiment=study_tiny`` (2 cells: the Gaussian approximation by NUTS and by
quadrature, strong prior, one design M = 2, N = 30, 40 replicates each) runs both SBC cells
through Hydra's multirun and ends with the summary callback, which writes the report into the
sweep folder: results.md, results.csv (a row per cell, a verdict) and the figures."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CELLS = {"gaussian-nuts-strong-study_m2-N30-seed0": "nuts", "gaussian-quadrature-strong-study_m2-N30-seed0": "quadrature"}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("study_tiny") / "sweep"
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "experiment=study_tiny",
                           f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep, proc


def test_every_cell_ran_in_its_own_readable_folder(tiny_study):
    sweep, _ = tiny_study
    folders = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name != "report")
    assert folders == sorted(CELLS)
    for name in CELLS:
        assert (sweep / name / "results.nc").is_file()


def test_summary_table_has_a_row_per_cell_with_a_verdict(tiny_study):
    sweep, _ = tiny_study
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


def test_summary_report_and_figures_written_not_into_docs(tiny_study):
    sweep, _ = tiny_study
    report = sweep / "report"
    md = (report / "results.md").read_text()
    assert "gaussian/nuts" in md and "gaussian/quadrature" in md
    assert "calibrated" in md
    figures = list((report / "figures").glob("*.png"))
    assert figures and all(f.stat().st_size > 1000 for f in figures)
