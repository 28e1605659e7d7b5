"""The study summary (noisydot_sbc.study): Holm, detection power, verdicts, the written report.

Cells are real-shaped SBC results Datasets (results.build_sbc_dataset) whose posteriors are
log-normal with a known calibration: a calibrated cell centres its posterior on t + s·ε
(ε ~ N(0, 1)), so the truth's posterior CDF is uniform; a miscalibrated one shrinks the width."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import yaml
from scipy import stats

from noisydot_sbc import results, sbc, study
from noisydot_sbc.models import PARAMS

PRIOR_LOC = {"x_noise_lvl": np.log(0.1), "w_noise_lvl": np.log(0.05)}


def make_cell(seed, model="marginal", inference="quadrature", prior="strong", n_inputs=2, S=200, L=49,
              width=1.0, ref=False, n_failed=0, design="small"):
    """A results Dataset of one SBC cell; ``width`` < 1: posteriors too narrow by that factor."""
    rng = np.random.default_rng(seed)
    s_post = 0.3
    true = np.stack([np.exp(PRIOR_LOC[p] + 0.6 * rng.normal(size=S)) for p in PARAMS], axis=1)  # (S, P)
    tl = np.log(true)
    centre = tl + s_post * rng.normal(size=tl.shape)
    draws_log = centre[:, None, :] + width * s_post * rng.normal(size=(S, L, len(PARAMS)))
    draws = np.exp(draws_log)
    failed = np.zeros(S, bool)
    failed[:n_failed] = True
    ranks = np.stack([sbc.compute_ranks(rng, true[:, j], draws[:, :, j], failed=failed) for j in range(len(PARAMS))], 1)
    mean, sd = draws.mean(axis=1), draws.std(axis=1, ddof=1)
    nanf = lambda a: np.where(failed.reshape((-1,) + (1,) * (a.ndim - 1)), np.nan, a)
    arrays = {
        "true": true, "rank": ranks, "failed": failed,
        "posterior_mean": nanf(mean), "posterior_sd": nanf(sd),
        "z_score": nanf((mean - true) / sd), "contraction": nanf(1 - sd**2 / 0.6**2),
        "draws": nanf(draws[:, None, :, :]), "wall_time_share": nanf(np.full(S, 0.01)),
        "error": np.array(["boom" if f else "" for f in failed], dtype=object),
        "contraction_log": (("replicate", "parameter"), nanf(np.full((S, 2), 1 - (width * s_post) ** 2 / 0.36))),
    }
    if inference == "nuts":
        arrays["diverging"] = np.where(failed, -1, (rng.random(S) < 0.1).astype(int))
    if ref:
        arrays["ref_w1_log"] = (("replicate", "parameter"), nanf(np.abs(1 - width) * s_post * np.ones((S, 2))))
        arrays["ref_median_shift"] = (("replicate", "parameter"), nanf(0.05 * rng.normal(size=(S, 2))))
    cfg = {"task": {"name": "sbc"}, "model": {"name": model},
           "prior": {"name": prior, "negative_control": prior == "naive",
                     "x_noise_lvl": {"family": "lognormal", "loc": float(PRIOR_LOC["x_noise_lvl"]), "scale": 0.6},
                     "w_noise_lvl": {"family": "lognormal", "loc": float(PRIOR_LOC["w_noise_lvl"]), "scale": 0.6}},
           "design": {"name": design, "n_obs": 20, "n_inputs": n_inputs, "x_dist": "normal", "y_noise": 0.0},
           "sampler": {"name": inference}, "sbc": {"num_ranks": L}}
    return results.build_sbc_dataset(
        arrays, {"quantity": list(PARAMS), "parameter": list(PARAMS)},
        {"num_ranks": L, "model": model, "prior": prior, "inference": inference, "config_yaml": yaml.safe_dump(cfg)})


def test_holm_matches_a_hand_computed_case():
    p = np.array([[0.01, 0.04], [0.03, np.nan], [0.005, 0.9]])
    # sorted 0.005, 0.01, 0.03, 0.04, 0.9 (m = 5): 5*0.005=0.025, 4*0.01=0.04, 3*0.03=0.09, 2*0.04=0.08 -> 0.09
    # (step-down maximum), 1*0.9=0.9
    want = np.array([[0.04, 0.09], [0.09, np.nan], [0.025, 0.9]])
    np.testing.assert_allclose(study.holm_adjust(p), want, rtol=1e-12)
    assert np.isnan(study.holm_adjust(p)[1, 1])
    np.testing.assert_allclose(study.holm_adjust([0.2, 0.5]), [0.4, 0.5])
    with pytest.raises(ValueError, match="p_values"):
        study.holm_adjust([1.5])


def test_detection_power_is_the_size_without_defect_and_high_with_a_large_one():
    rng = np.random.default_rng(1)
    uniform = lambda g, n: g.random(n)
    size = study.detection_power(rng, uniform, num_ranks=99, n_replicates=100, level=0.05, n_resamples=400)
    assert 0.015 <= size <= 0.095  # 0.05 ± 3.5 binomial sds of 400 resamples
    narrow = lambda g, n: stats.norm.cdf(g.normal(size=n) / 0.5)  # posteriors half as wide as they should be
    assert study.detection_power(rng, narrow, 99, 100, 0.05, n_resamples=100) >= 0.95
    with pytest.raises(ValueError, match="n_replicates"):
        study.detection_power(rng, uniform, 99, 1, 0.05)
    with pytest.raises(ValueError, match="cdf_sampler"):
        study.detection_power(rng, lambda g, n: np.full(n, 2.0), 99, 10, 0.05, n_resamples=1)


def test_defect_sampler_on_stored_draws():
    rng = np.random.default_rng(2)
    S, D = 300, 99
    draws = rng.normal(size=(S, 1)) + 0.3 * rng.gamma(4.0, size=(S, D))  # skewed posteriors
    none = study.DefectSampler(draws, study.NO_DEFECT)
    # without a defect u is the fresh uniform quantile itself
    u = none(np.random.default_rng(5), 1000)
    g = np.random.default_rng(5)
    g.integers(0, S, size=1000)
    np.testing.assert_allclose(u, g.random(1000), atol=1e-12)
    # the size at S equal to the stored replicates stays nominal (resampling stored ranks would not)
    size = study.detection_power(rng, none, 99, S, 0.05, n_resamples=300)
    assert size <= 0.095
    # at 60 replicates: width x0.8 is detected sometimes, x0.5 nearly always
    p08 = study.detection_power(rng, study.DefectSampler(draws, study.DEFECTS[0]), 99, 60, 0.05, n_resamples=100)
    p05 = study.detection_power(rng, study.DefectSampler(draws, study.Defect("w0.5", "scale", 0.5)), 99, 60, 0.05,
                                n_resamples=100)
    assert size < p08 < p05 and p08 < 0.9 and p05 >= 0.95
    shift = study.DefectSampler(draws, study.DEFECTS[2])(rng, 4000)
    # draws shifted up by 0.3 sd: the truth falls low, u = P(Z < z - 0.3) on average (about 0.38 for normals)
    assert 0.33 < np.mean(shift) < 0.43
    with pytest.raises(ValueError, match="draws_log"):
        study.DefectSampler(draws[:, :1], study.NO_DEFECT)


def test_verdicts_flag_the_miscalibrated_cell_only():
    good = make_cell(0, "marginal", "quadrature")
    bad = make_cell(1, "gaussian", "nuts", width=0.5)
    df = study.study_table([good, bad])
    assert list(df["verdict"]) == ["calibrated", "miscalibrated"]
    assert df.attrs["n_tests"] == 4
    raw = df[[f"ecdf_p_{p}" for p in PARAMS]].to_numpy()
    np.testing.assert_allclose(df[[f"holm_p_{p}" for p in PARAMS]].to_numpy(), study.holm_adjust(raw))
    assert df.loc[1, "min_holm_p"] <= 0.05 < df.loc[0, "min_holm_p"]
    assert list(df["role"]) == ["positive control", "approximation"]


def test_write_study_report_writes_table_figures_and_findings(tmp_path):
    root = tmp_path / "multirun"
    cells = [make_cell(0, "marginal", "quadrature", ref=False, n_failed=3),
             make_cell(1, "gaussian", "nuts", width=0.5, ref=True),
             make_cell(2, "latent", "nuts", prior="weak", S=100),
             make_cell(3, "gaussian", "quadrature", prior="naive", width=0.6, S=100, n_inputs=8)]
    for i, ds in enumerate(cells):
        results.save_dataset(ds, root / str(i) / "results.nc")
    # job wall times from the run folders' files: run 0 started 100 s before its last chunk, run 1 30 s
    import os
    for i, (start, end) in enumerate([(1000.0, 1100.0), (1050.0, 1080.0)]):
        fp = root / str(i) / "chunks" / "config_fingerprint.txt"
        fp.parent.mkdir()
        fp.write_text("x\n")
        os.utime(fp, (start, start))
        for k, t in enumerate((start + 1.0, end)):  # the last chunk's mtime ends the job, not results.nc's
            (fp.parent / f"chunk_{k:05d}.nc").write_text("x\n")
            os.utime(fp.parent / f"chunk_{k:05d}.nc", (t, t))
        os.utime(root / str(i) / "results.nc", (end + 500.0, end + 500.0))
    (root / "stray").mkdir()
    (root / "stray" / "left_out.txt").write_text("latent/nuts leaves study_m1 out\n")
    out = study.write_study_report(root, tmp_path / "docs", n_resamples=40, fisher_sims=0)
    docs = tmp_path / "docs"
    assert sorted(f.name for f in (docs / "figures").iterdir()) == [
        "study_ecdf_naive.png", "study_ecdf_strong.png", "study_ecdf_weak.png", "study_reference.png"]
    assert (docs / "figures" / "study_ecdf_strong.png").stat().st_size > 10_000
    assert (docs / "figures" / "study_reference.png").is_file()
    with open(docs / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["cell"] for r in rows] == ["latent/nuts", "marginal/quadrature", "gaussian/nuts", "gaussian/quadrature"]
    assert [r["verdict"] for r in rows] == ["calibrated", "calibrated", "miscalibrated", "miscalibrated"]
    assert [int(r["failed"]) for r in rows] == [0, 3, 0, 0]
    assert [float(r["job_seconds"]) for r in rows[1:3]] == [100.0, 30.0] and rows[0]["job_seconds"] in ("", "nan")
    assert out["control"].startswith("marginal/quadrature")  # quadrature on the marginal model preferred
    # power: the width x0.8 defect is detected more often with 197 than with 100 replicates
    df = out["table"]
    p197 = df.loc[df["cell"] == "marginal/quadrature", "power_width_x08"].item()
    p100 = df.loc[df["cell"] == "latent/nuts", "power_width_x08"].item()
    assert 0 <= p100 <= p197 <= 1
    md = (docs / "results.md").read_text()
    assert md.count("\n| ") >= 5 + 1  # header + 4 cells in the main table, plus the other tables
    assert "Positive control: all 2 cells of the exact models" in md
    assert "The Gaussian approximation is miscalibrated in 1 of 1 cell: gaussian/nuts under the strong prior" in md
    assert "Negative control (naive prior, gaussian/quadrature" in md and "detected as miscalibrated" in md
    assert "Distance to the exact posterior, gaussian/nuts" in md
    assert "- `stray`: latent/nuts leaves study_m1 out" in md
    assert "figures/study_ecdf_weak.png" in md and "figures/study_reference.png" in md
    ident = out["identifiability"]
    assert set(ident["n_inputs"]) == {2, 8} and set(ident["separable"]) == {"yes"}


def test_study_summary_callback_writes_the_report_of_the_sweep_dir(tmp_path):
    from omegaconf import OmegaConf

    sweep = tmp_path / "multirun" / "2026"
    results.save_dataset(make_cell(0, S=30), sweep / "0" / "results.nc")
    cb = study.StudySummary(docs_dir="out_docs", n_resamples=10, fisher_sims=0)
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": "multirun/2026"}, "runtime": {"cwd": str(tmp_path)}}})
    cb.on_multirun_end(cfg)
    assert (tmp_path / "out_docs" / "results.md").is_file()
    assert (tmp_path / "out_docs" / "results.csv").is_file()
    with pytest.raises(ValueError, match="docs_dir"):
        study.StudySummary(docs_dir="")
    with pytest.raises(ValueError, match="no SBC results"):
        study.write_study_report(tmp_path / "out_docs", tmp_path / "x")


def test_identifiability_reads_stored_fisher_and_flags_prior_dominated_designs():
    a = make_cell(0, "marginal", "quadrature", S=40)
    cond = np.linspace(10.0, 30.0, 40)
    a = results.add_variables(a, {"fisher_condition_number": (("replicate",), cond)})
    b = make_cell(1, "latent", "nuts", S=40, n_inputs=8, width=2.5)  # contraction of log σ: 1 - (0.75)²/0.36 < 0.1
    df = study.study_table([a, b])
    ident = study.identifiability_table(df, [a, b], fisher_sims=0).set_index("n_inputs")
    assert ident.loc[2, "fisher_condition_number"] == pytest.approx(np.median(cond))
    assert ident.loc[2, "fisher_source"].startswith("stored")
    assert ident.loc[2, "separable"] == "yes"
    assert ident.loc[8, "separable"].startswith("no: σ_w stays prior-dominated")
    assert np.isnan(ident.loc[8, "fisher_condition_number"])  # nothing stored, nothing computed


@pytest.mark.slow
def test_identifiability_computes_fisher_at_the_prior_medians():
    a = make_cell(0, "marginal", "quadrature", S=20)
    df = study.study_table([a])
    ident = study.identifiability_table(df, [a], fisher_sims=8, n_designs=2)
    row = ident.iloc[0]
    assert 1.0 <= row["fisher_condition_number"] < 1e4 and row["design_rank"] == 1
    assert 0 < row["crb_sd_log_w_noise_lvl"] < 10
    assert "strong prior's medians" in row["fisher_source"]
