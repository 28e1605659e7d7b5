"""task=fit end to end: the shipped sample and simulated measurements with known noise levels."""
import json
import logging
from pathlib import Path

import jax
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from noisydot_sbc import config, results, tasks  # noqa: F401  (config registers the schemas)

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_measurements.nc"
# one sampler setting and the shipped sample's shape (N = 300, M = 8) for every fit of the session,
# so the compiled sampler and Fisher information are shared (test_notebooks.py uses the same)
FIT = ["sampler.num_warmup=200", "sampler.num_samples=30", "sampler.num_chains=2", "task.ppc_draws=50",
       "task.fisher_sims=8"]


def _cfg(out, overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"+output_dir={out}", "task=fit", "progress=false",
                                                        *overrides])


def test_fit_task_on_shipped_sample(tmp_path, caplog):
    import arviz as az

    cfg = _cfg(tmp_path, [f"data.path={SAMPLE}", "model=gaussian", *FIT])
    with caplog.at_level(logging.WARNING, logger="noisydot_sbc"):
        summary = tasks.run(cfg)
    for f in ("posterior.nc", "summary.csv", "ppc.nc", "ppc.png", "fit.json"):
        assert (tmp_path / f).exists(), f
    idata = az.from_netcdf(tmp_path / "posterior.nc")
    assert set(idata.posterior.data_vars) >= {"x_noise_lvl", "w_noise_lvl"}
    assert idata.observed_data["y"].dims == ("obs",)
    assert idata.constant_data["x"].dims == ("obs", "input") and idata.constant_data["w"].dims == ("input",)
    rows = {r["parameter"]: r for r in summary["summary"]}
    # the sample file was simulated with σ_x = 0.08, σ_w = 0.06 (data/make_sample.py)
    assert abs(rows["x_noise_lvl"]["mean"] - 0.08) / rows["x_noise_lvl"]["sd"] < 3.5
    assert abs(rows["w_noise_lvl"]["mean"] - 0.06) / rows["w_noise_lvl"]["sd"] < 3.5
    # 2 x 30 draws cannot reach a bulk ESS of 400: the fit says so, naming the parameter
    verdict = json.loads((tmp_path / "fit.json").read_text())["convergence"]
    assert verdict["ok"] is False and verdict["thresholds"]["ess_bulk"] == 400
    assert any("bulk ESS of x_noise_lvl" in w for w in verdict["warnings"])
    assert any("bulk ESS of w_noise_lvl" in r.getMessage() for r in caplog.records)
    assert summary["inference"] == "nuts"


def test_fit_task_covers_known_noise_levels(tmp_path):
    from noisydot_sbc.simulate import make_design, simulate_y

    kd, ky = jax.random.split(jax.random.PRNGKey(11))
    d = make_design(kd, 300, 8, x_dist="magnitude", x_spread=3.0)
    sx, sw = 0.12, 0.08
    y = simulate_y(ky, d.x, d.w, sx, sw)
    path = tmp_path / "measured.csv"
    results.save_measurements(path, d.x, d.w, y)
    summary = tasks.run(_cfg(tmp_path / "out", ["model=gaussian", f"data.path={path}", *FIT]))
    rows = {r["parameter"]: r for r in summary["summary"]}
    # posterior z-scores: |z| > 3.5 has probability ~5e-4 under a calibrated posterior
    assert abs(rows["x_noise_lvl"]["mean"] - sx) / rows["x_noise_lvl"]["sd"] < 3.5
    assert abs(rows["w_noise_lvl"]["mean"] - sw) / rows["w_noise_lvl"]["sd"] < 3.5
    assert rows["w_noise_lvl"]["sd"] < 0.5 * sw  # and the data do pin σ_w down (wide spread of |x|)
    assert summary["convergence"]["ok"] == (not summary["convergence"]["warnings"])


def test_fit_task_bad_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("x_0,x_2,y\n1,2,3\n")
    with pytest.raises(ValueError, match="x_0..x_"):
        tasks.run(_cfg(tmp_path / "out", [f"data.path={bad}"]))
    with pytest.raises(ValueError, match="does not exist"):
        tasks.run(_cfg(tmp_path / "out2", [f"data.path={tmp_path / 'missing.nc'}"]))


@pytest.mark.slow
def test_fit_task_marginal_on_shipped_sample(tmp_path):
    cfg = _cfg(tmp_path, [f"data.path={SAMPLE}", "model=marginal", "sampler.num_warmup=300",
                          "sampler.num_samples=300", "task.ppc_draws=50"])
    rows = {r["parameter"]: r for r in tasks.run(cfg)["summary"]}
    assert abs(rows["x_noise_lvl"]["mean"] - 0.08) / rows["x_noise_lvl"]["sd"] < 3.5
    assert abs(rows["w_noise_lvl"]["mean"] - 0.06) / rows["w_noise_lvl"]["sd"] < 3.5
