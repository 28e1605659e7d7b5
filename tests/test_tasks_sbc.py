"""task=sbc end to end on tiny configurations (Hydra compose, in process), and its steps.

The tiny configuration is the one of test_ranks_pinned.py (same shapes and sampler), so the
compiled sampler and test quantities are shared by the tests of one session.
"""
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from noisydot_sbc import config, results, sbc, simulate, tasks  # noqa: F401  (config registers the schemas)
from noisydot_sbc.tasks import sbc as sbc_task

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["sbc.num_ranks=19", "sampler.num_warmup=100", "sampler.num_samples=50", "sampler.num_chains=2",
        "sampler.max_tree_depth=5", "design.n_obs=20", "design.n_inputs=3", "progress=false", "seed=3",
        "sbc.chunk_size=4"]


def _cfg(out, overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"+output_dir={out}", *overrides])


def test_sbc_run_writes_results_and_resumes(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, ["model=gaussian", *TINY, "sbc.num_replicates=8"])
    calls = []
    real_chunk = sbc_task.sbc_chunk

    def interrupted(setup, ci, *a, **k):
        calls.append(ci)
        if ci == 1:
            raise KeyboardInterrupt  # Ctrl-C while the second chunk is in flight
        return real_chunk(setup, ci, *a, **k)

    monkeypatch.setattr(sbc_task, "sbc_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tasks.run(cfg)
    assert results.finished_chunks(tmp_path / "chunks") == {0}
    assert not (tmp_path / "results.nc").exists()

    calls.clear()
    monkeypatch.setattr(sbc_task, "sbc_chunk", lambda *a, **k: (calls.append(a[1]), real_chunk(*a, **k))[1])
    summary = tasks.run(cfg)
    assert calls == [1]  # the finished chunk was not recomputed
    ds = results.load_dataset(tmp_path / "results.nc")
    assert list(ds["replicate"].values) == list(range(8))
    assert list(ds["quantity"].values) == ["x_noise_lvl", "w_noise_lvl", "log_lik", "w_over_x"]
    assert ds["rank"].values.min() >= 0 and ds["rank"].values.max() <= 19
    for name in ("r_hat", "ess_bulk", "bfmi", "diverging", "step_size", "corr_log", "ecdf_p", "n_failed"):
        assert name in ds.variables, name
    assert ds.attrs["inference"] == "nuts"
    assert "model:\n  name: gaussian" in ds.attrs["config_yaml"]
    assert summary["failed"] == int(ds["failed"].values.sum()) == 0
    # the first 4 replicates are those of the pinned run (a replicate id is the same replicate in any chunk)
    from test_ranks_pinned import PINNED

    np.testing.assert_array_equal(ds["rank"].values[:4], PINNED["gaussian"]["rank"])
    for png in ("ecdf_diff.png", "rank_hist.png", "zscore_contraction.png", "diagnostics.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    # the same folder refuses another configuration instead of mixing chunks
    with pytest.raises(ValueError, match="another configuration"):
        tasks.run(_cfg(tmp_path, ["model=gaussian", *TINY, "sbc.num_replicates=8", "seed=5"]))


def test_failed_replicate_is_recorded_and_the_run_completes(tmp_path, monkeypatch):
    """Fault injection: replicate 1's y is NaN (set aside before the fit), replicate 2's y is 1e300
    (finite, but its log-likelihood is not: the chains find no finite start)."""
    real = simulate.simulate_replicates

    def corrupt(root_key, ids, *a, **k):
        data, truth = real(root_key, ids, *a, **k)
        ids = np.asarray(ids)
        data["y"] = data["y"].at[np.flatnonzero(ids == 1)].set(np.nan).at[np.flatnonzero(ids == 2)].set(1e300)
        return data, truth

    monkeypatch.setattr(simulate, "simulate_replicates", corrupt)
    cfg = _cfg(tmp_path, ["model=gaussian", *TINY, "sbc.num_replicates=4"])
    summary = tasks.run(cfg)
    ds = results.load_dataset(tmp_path / "results.nc")
    failed = ds["failed"].values.astype(bool)
    assert failed.tolist() == [False, True, True, False]
    assert str(ds["error"].values[1]) == "non-finite simulated y"
    # the truth of a failed replicate is kept as data; its log-likelihood at the NaN data is NaN
    assert np.isfinite(ds["true"].sel(quantity="x_noise_lvl").values).all()
    assert np.isnan(ds["true"].sel(quantity="log_lik").values[1])
    assert "finite" in str(ds["error"].values[2])
    assert summary["failed"] == 2 and sum(summary["failure_reasons"].values()) == 2
    assert (ds["rank"].values[failed] == -1).all() and np.isnan(ds["posterior_mean"].values[failed]).all()
    # the others are untouched: their ranks are the pinned ones
    from test_ranks_pinned import PINNED

    np.testing.assert_array_equal(ds["rank"].values[~failed], np.array(PINNED["gaussian"]["rank"])[~failed])
    # the uniformity tests are those of the 2 replicates that did not fail
    expected = sbc.uniformity_tests(ds["rank"].values[~failed], 19)
    np.testing.assert_allclose(ds["ecdf_p"].values, expected["ecdf_p"])
    assert (ds["n_failed"].values == 2).all() and (ds["n_replicates"].values == 2).all()
    assert (tmp_path / "ecdf_diff.png").exists()
    json.dumps(summary)  # the headline figures are plain data


def test_reference_to_the_exact_posterior(tmp_path, monkeypatch):
    """sbc.reference=exact on a tiny gaussian NUTS run: per replicate the discrepancy of the fit to the
    quadrature posterior of the exact model. At these small noise levels the Gaussian approximation
    is close to exact, so what is left is the Monte Carlo error of 100 draws: W1 well below the
    posterior's log-scale sd, sd ratio near 1, median shift a fraction of an sd. A replicate with NaN
    data fails and its discrepancies stay NaN; so do those of replicate 3, beyond
    sbc.reference_replicates = 3."""
    real = simulate.simulate_replicates

    def corrupt(root_key, ids, *a, **k):
        data, truth = real(root_key, ids, *a, **k)
        data["y"] = data["y"].at[np.flatnonzero(np.asarray(ids) == 1)].set(np.nan)
        return data, truth

    monkeypatch.setattr(simulate, "simulate_replicates", corrupt)
    cfg = _cfg(tmp_path, ["model=gaussian", *TINY, "sbc.num_replicates=4", "sbc.reference=exact",
                         "sbc.reference_replicates=3"])
    tasks.run(cfg)
    ds = results.load_dataset(tmp_path / "results.nc")
    failed = ds["failed"].values.astype(bool)
    assert failed.tolist() == [False, True, False, False]
    for v in ("ref_w1_log", "ref_kl_log", "ref_median_shift", "ref_sd_ratio"):
        assert ds[v].dims == ("replicate", "parameter"), v
        assert np.isnan(ds[v].values[[1, 3]]).all() and np.isfinite(ds[v].values[[0, 2]]).all(), v
    assert ds["ref_certified"].values.tolist() == [True, False, True, False]
    ok = ds.isel(replicate=[0, 2])
    assert (ok["ref_w1_log"].values < 0.15).all() and (ok["ref_w1_log"].values > 0).all()
    assert np.all(np.abs(ok["ref_sd_ratio"].values - 1) < 0.35)
    assert np.all(np.abs(ok["ref_median_shift"].values) < 0.5)
    assert np.all((ok["ref_kl_log"].values >= 0) & (ok["ref_kl_log"].values < 0.2))
    # the fits are the pinned ones (the reference changes nothing upstream)
    from test_ranks_pinned import PINNED

    np.testing.assert_array_equal(ds["rank"].values[~failed], np.array(PINNED["gaussian"]["rank"])[~failed])
    assert (tmp_path / "reference.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="sbc.reference"):
        tasks.run(_cfg(tmp_path / "bad", ["model=gaussian", *TINY, "sbc.reference=nuts"]))


def test_quantities_come_from_the_config(tmp_path):
    cfg = _cfg(tmp_path, ["model=gaussian", *TINY, "sbc.num_replicates=4", "sbc.quantities=[w_over_x,x_noise_lvl]"])
    tasks.run(cfg)
    ds = results.load_dataset(tmp_path / "results.nc")
    assert list(ds["quantity"].values) == ["w_over_x", "x_noise_lvl"]
    from test_ranks_pinned import PINNED, TRUE

    # the same replicates and fits as the pinned run: x_noise_lvl's truth, posterior mean and ranks
    # (no ties: a rank is the number of draws below the truth, whatever the tie-breaking stream)
    np.testing.assert_allclose(ds["true"].values[:, 1], np.array(TRUE)[:, 0], rtol=1e-12)
    np.testing.assert_allclose(ds["posterior_mean"].values[:, 1], np.array(PINNED["gaussian"]["posterior_mean"])[:, 0],
                               rtol=1e-9)
    np.testing.assert_array_equal(ds["rank"].values[:, 1], np.array(PINNED["gaussian"]["rank"])[:, 0])
    np.testing.assert_allclose(ds["true"].values[:, 0], np.array(TRUE)[:, 3], rtol=1e-12)


def test_unknown_quantity_is_refused_before_any_work(tmp_path):
    cfg = _cfg(tmp_path, ["model=gaussian", *TINY, "sbc.num_replicates=4", "sbc.quantities=[x_noise_lvl,nope]"])
    with pytest.raises(ValueError, match="sbc.quantities"):
        tasks.run(cfg)
    assert not (tmp_path / "chunks").exists() or not any((tmp_path / "chunks").glob("chunk_*.nc"))


def test_bad_sbc_config_names_the_field(tmp_path):
    cfg = _cfg(tmp_path, ["model=gaussian", *TINY, "sbc.num_replicates=4", "sbc.num_ranks=1000"])
    with pytest.raises(ValueError, match="num_ranks"):
        tasks.run(cfg)


@pytest.mark.slow  # about 3 minutes on 2 busy cores: the exact log-likelihood at |x| ~ 1e18 in float32
def test_float32_far_out_design_completes_with_failures_recorded(tmp_path):
    """Issue 12's command (with num_ranks within the 50 draws kept): float32 with x_scale = 1e18 gives
    constant draws in some replicates."""
    cmd = [sys.executable, str(ROOT / "run.py"), "precision=float32", "model=gaussian", "prior=weak",
           "design.x_scale=1e18", "design.n_obs=20", "sbc.num_replicates=16", "sbc.chunk_size=16",
           "sampler.num_warmup=50", "sampler.num_samples=50", "sbc.num_ranks=49", "progress=false",
           f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ds = results.load_dataset(tmp_path / "results.nc")
    failed = ds["failed"].values.astype(bool)
    assert ds.sizes["replicate"] == 16 and failed.any()
    assert all(str(e) for e in ds["error"].values[failed])
    assert not any(str(e) for e in ds["error"].values[~failed])
    assert (ds["n_failed"].values == failed.sum()).all()


@pytest.mark.slow
def test_cli_multirun_sweeps_the_three_models(tmp_path):
    """`python run.py -m model=latent,marginal,gaussian` from the command line (Hydra multirun)."""
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "model=latent,marginal,gaussian", *TINY,
           "sbc.num_replicates=3", f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(p.parent.name for p in tmp_path.rglob("results.nc"))
    assert [f.split("-")[0] for f in found] == ["gaussian", "latent", "marginal"]
    for p in tmp_path.rglob("results.nc"):
        assert results.load_dataset(p).sizes["replicate"] == 3


# ----------------------------------------------------------------------------- steps
def _chunk(samples, truth, failed=None):
    from noisydot_sbc.inference import Posterior
    from noisydot_sbc.tasks.common import FailureLog

    S = len(truth["x_noise_lvl"])
    failed = np.zeros(S, bool) if failed is None else np.asarray(failed)
    post = Posterior(samples, {}, {}, (), failed, ["no finite initial point" if f else "" for f in failed], "nuts",
                     {}, False, 0.0, 0.0)
    return sbc_task.Chunk(0, np.arange(S), {}, truth, post, FailureLog.of(post, S))


def test_screen_draws_records_why_each_replicate_cannot_be_ranked():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 0.1, (4, 2, 30))
    w = rng.normal(1.0, 0.1, (4, 2, 30))
    x[1] = 0.5  # constant draws: zero posterior sd
    w[2, 0, 3] = np.nan  # one non-finite draw
    x[3] = np.nan  # the method said it failed
    setup = sbc_task.Setup(*([None] * 13))._replace(num_ranks=10)
    chunk = sbc_task.screen_draws(setup, _chunk({"x_noise_lvl": x, "w_noise_lvl": w},
                                                {"x_noise_lvl": np.ones(4), "w_noise_lvl": np.ones(4)},
                                                failed=[False, False, False, True]))
    f = chunk.failures
    assert f.failed.tolist() == [False, True, True, True]
    assert f.error[0] == "" and "zero posterior sd" in f.error[1] and f.error[1].startswith("x_noise_lvl")
    assert "non-finite" in f.error[2] and f.error[2].startswith("w_noise_lvl")
    assert f.error[3] == "no finite initial point"  # the first reason is kept
    assert chunk.theta["x_noise_lvl"].shape == (4, 10)
    assert np.isfinite(chunk.theta["x_noise_lvl"][0]).all() and np.isnan(chunk.theta["x_noise_lvl"][1:]).all()
