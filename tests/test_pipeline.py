"""End-to-end tests of the pipeline on small configurations (Hydra compose, no subprocess)."""
from pathlib import Path

import jax
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from noisydot_sbc import pipeline, results

jax.config.update("jax_enable_x64", True)

CONF = Path(__file__).resolve().parents[1] / "conf"
DATA = Path(__file__).resolve().parents[1] / "data"

SMALL = [
    "sbc.num_replicates=6", "sbc.chunk_size=3", "sbc.num_ranks=19",
    "sampler.num_warmup=150", "sampler.num_samples=100", "sampler.num_chains=2",
    "design.n_obs=40", "design.n_inputs=3", "progress=false",
]


def _cfg(tmp_path, overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[f"+output_dir={tmp_path}", f"data.path={DATA / 'sample_measurements.nc'}", *overrides])


def test_sbc_run_writes_results_and_resumes(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, ["model=gaussian", *SMALL])
    calls = []
    real_chunk = pipeline._sbc_chunk

    def interrupted(cfg_, ci, *a, **k):
        calls.append(ci)
        if ci == 1:
            raise KeyboardInterrupt  # Ctrl-C while the second chunk is in flight
        return real_chunk(cfg_, ci, *a, **k)

    monkeypatch.setattr(pipeline, "_sbc_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(cfg)
    assert results.finished_chunks(tmp_path / "chunks") == {0}
    assert not (tmp_path / "results.nc").exists()

    calls.clear()
    monkeypatch.setattr(pipeline, "_sbc_chunk", lambda *a, **k: (calls.append(a[1]), real_chunk(*a, **k))[1])
    summary = pipeline.run(cfg)
    assert calls == [1]  # the finished chunk was not recomputed
    ds = results.load_dataset(tmp_path / "results.nc")
    assert ds.sizes["replicate"] == 6
    assert list(ds["replicate"].values) == list(range(6))
    assert set(ds["quantity"].values) == {"x_noise_lvl", "w_noise_lvl", "log_lik", "w_over_x"}
    assert ds["rank"].values.min() >= 0 and ds["rank"].values.max() <= 19
    for name in ("r_hat", "ess_bulk", "bfmi", "diverging", "step_size", "corr_log", "ecdf_p"):
        assert name in ds.variables
    assert "model:\n  name: gaussian" in ds.attrs["config_yaml"]
    assert summary["failed"] == int(ds["failed"].values.sum())
    for png in ("ecdf_diff.png", "rank_hist.png", "zscore_contraction.png", "diagnostics.png"):
        assert (tmp_path / png).stat().st_size > 10_000


def test_resume_refuses_a_different_config(tmp_path):
    cfg = _cfg(tmp_path, ["model=gaussian", *SMALL, "sbc.num_replicates=3"])
    pipeline.run(cfg)
    other = _cfg(tmp_path, ["model=gaussian", *SMALL, "sbc.num_replicates=3", "seed=5"])
    with pytest.raises(ValueError, match="different configuration"):
        pipeline.run(other)


def test_sbc_marginal_model_runs(tmp_path):
    cfg = _cfg(tmp_path, ["model=marginal", *SMALL, "sbc.num_replicates=3"])
    summary = pipeline.run(cfg)
    ds = results.load_dataset(tmp_path / "results.nc")
    assert summary["failed"] == 0
    assert ds.attrs["model"] == "marginal"
    # the true log-likelihood must be a finite number and close to the posterior's
    assert np.all(np.isfinite(ds["true"].sel(quantity="log_lik").values))


def test_bad_sbc_config_names_the_field(tmp_path):
    cfg = _cfg(tmp_path, ["model=gaussian", *SMALL, "sbc.num_ranks=1000"])
    with pytest.raises(ValueError, match="num_ranks"):
        pipeline.run(cfg)


def test_fit_task_on_shipped_sample(tmp_path):
    cfg = _cfg(tmp_path, ["task=fit", "model=marginal", "sampler.num_warmup=300", "sampler.num_samples=300",
                          "sampler.num_chains=2", "task.ppc_draws=50"])
    summary = pipeline.run(cfg)
    for f in ("posterior.nc", "summary.csv", "ppc.nc", "ppc.png", "fit.json"):
        assert (tmp_path / f).exists(), f
    import arviz as az

    idata = az.from_netcdf(tmp_path / "posterior.nc")
    assert set(idata.posterior.data_vars) >= {"x_noise_lvl", "w_noise_lvl"}
    rows = {r["parameter"]: r for r in summary["summary"]}
    # the sample file was simulated with σ_x = 0.08, σ_w = 0.06 (data/make_sample.py)
    assert abs(rows["x_noise_lvl"]["mean"] - 0.08) / rows["x_noise_lvl"]["sd"] < 3.5
    assert abs(rows["w_noise_lvl"]["mean"] - 0.06) / rows["w_noise_lvl"]["sd"] < 3.5
    assert rows["x_noise_lvl"]["r_hat"] < 1.05


@pytest.mark.parametrize("suffix", [".csv", ".nc"])
def test_fit_task_covers_known_noise_levels(tmp_path, suffix):
    from noisydot_sbc.simulate import make_design, simulate_y

    kd, ky = jax.random.split(jax.random.PRNGKey(11))
    d = make_design(kd, 250, 4, x_dist="magnitude", x_spread=3.0)
    sx, sw = 0.12, 0.08
    y = simulate_y(ky, d.x, d.w, sx, sw)
    path = tmp_path / f"measured{suffix}"
    results.save_measurements(path, d.x, d.w, y)
    cfg = _cfg(tmp_path / "out", ["task=fit", "model=gaussian", f"data.path={path}", "sampler.num_warmup=300",
                                  "sampler.num_samples=400", "task.ppc_draws=50"])
    summary = pipeline.run(cfg)
    rows = {r["parameter"]: r for r in summary["summary"]}
    # posterior z-scores: |z| > 3.5 has probability ~5e-4 under a calibrated posterior
    assert abs(rows["x_noise_lvl"]["mean"] - sx) / rows["x_noise_lvl"]["sd"] < 3.5
    assert abs(rows["w_noise_lvl"]["mean"] - sw) / rows["w_noise_lvl"]["sd"] < 3.5
    assert rows["w_noise_lvl"]["sd"] < 0.5 * sw  # and the data do pin σ_w down (wide spread of |x|)


def test_fit_task_bad_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("x_0,x_2,y\n1,2,3\n")
    cfg = _cfg(tmp_path / "out", ["task=fit", f"data.path={bad}"])
    with pytest.raises(ValueError, match="x_0..x_"):
        pipeline.run(cfg)
    cfg = _cfg(tmp_path / "out", ["task=fit", f"data.path={tmp_path / 'missing.nc'}"])
    with pytest.raises(ValueError, match="does not exist"):
        pipeline.run(cfg)


def test_degeneracy_map_shows_the_ridge(tmp_path):
    cfg = _cfg(tmp_path, [
        "task=degeneracy", "model=gaussian", "task.x_spread=[0.0,3.0]", "task.ratio=[0.5]",
        "task.facets=[{n_obs:100,n_inputs:4}]", "task.replicates_per_cell=2", "task.fisher_sims=16",
        "sampler.num_warmup=200", "sampler.num_samples=200",
    ])
    pipeline.run(cfg)
    ds = results.load_dataset(tmp_path / "degeneracy.nc")
    cond = ds["log10_condition"].values[0, :, 0]
    contraction = ds["contraction_w"].values[0, :, 0]
    assert cond[0] > cond[1] + 0.5          # no spread in |x|: a near-singular information matrix
    assert contraction[1] > contraction[0]   # spread in |x| lets the data pin down σ_w
    assert (tmp_path / "degeneracy_log10_condition.png").exists()


def test_cli_multirun_sweeps_the_three_models(tmp_path):
    """`python run.py -m model=latent,marginal,gaussian` from the command line (Hydra multirun)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    tiny = {o.split("=")[0]: o for o in SMALL}
    tiny.update({o.split("=")[0]: o for o in ["sbc.num_replicates=3", "design.n_obs=20", "design.n_inputs=2",
                                             "sampler.num_warmup=100", "sampler.num_samples=60"]})
    cmd = [sys.executable, str(root / "run.py"), "-m", "model=latent,marginal,gaussian", *tiny.values(),
           f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(p.parent.name for p in tmp_path.rglob("results.nc"))
    assert [f.split("-")[0] for f in found] == ["gaussian", "latent", "marginal"]
    for p in tmp_path.rglob("results.nc"):
        ds = results.load_dataset(p)
        assert ds.sizes["replicate"] == 3
