import json
import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from noisydot_sbc import results

QUANT = ["x_noise_lvl", "w_noise_lvl", "log_lik"]
PARAMS = ["x_noise_lvl", "w_noise_lvl"]


def make_arrays(s=6, c=2, d=5, l_=9, seed=0, n_failed=1):
    rng = np.random.default_rng(seed)
    q, p = len(QUANT), len(PARAMS)
    failed = np.zeros(s, bool)
    failed[:n_failed] = True
    arr = {
        "true": rng.normal(size=(s, q)),
        "rank": rng.integers(0, l_ + 1, size=(s, q)),
        "posterior_mean": rng.normal(size=(s, q)),
        "posterior_sd": rng.uniform(0.1, 1, size=(s, q)),
        "z_score": rng.normal(size=(s, p)),
        "contraction": rng.uniform(size=(s, p)),
        "draws": rng.normal(size=(s, c, d, p)),
        "diverging": rng.integers(0, 3, size=s),
        "tree_depth_hits": np.zeros(s, int),
        "bfmi": rng.uniform(0.5, 1.5, size=(s, c)),
        "r_hat": 1 + rng.uniform(0, 0.02, size=(s, p)),
        "ess_bulk": rng.uniform(100, 400, size=(s, p)),
        "ess_tail": rng.uniform(100, 400, size=(s, p)),
        "step_size": rng.uniform(0.1, 1, size=(s, c)),
        "mean_tree_depth": rng.uniform(2, 4, size=s),
        "n_steps": rng.integers(100, 1000, size=s),
        "wall_time_share": rng.uniform(size=s),
        "failed": failed,
        "error": np.array(["RuntimeError: boom ü" if f else "" for f in failed], dtype=object),
    }
    arr["posterior_mean"][failed] = np.nan
    return arr


ATTRS = {"config_yaml": "model: gaussian\nprior: strong\n", "seed": 3, "model": "gaussian", "prior": "strong",
         "num_ranks": 9, "chain_method": "vectorized"}


def make_ds(replicate=None, **kw):
    a = make_arrays(**kw)
    return results.build_sbc_dataset(a, {"quantity": QUANT, "parameter": PARAMS, "replicate": replicate}, ATTRS)


def test_build_and_round_trip(tmp_path):
    ds = make_ds()
    assert dict(ds.sizes) == {"replicate": 6, "quantity": 3, "parameter": 2, "chain": 2, "draw": 5}
    assert ds["draws"].dims == ("replicate", "chain", "draw", "parameter")
    assert json.loads(ds.attrs["versions"])["numpy"] == np.__version__
    path = results.save_dataset(ds, tmp_path / "results.nc")
    back = results.load_dataset(path)
    assert back["failed"].dtype == bool
    assert back["rank"].dtype.kind == "i"
    assert list(back["error"].values) == list(ds["error"].values)
    assert list(back["quantity"].values) == QUANT
    for v in ds.data_vars:
        if ds[v].dtype.kind == "f":
            np.testing.assert_array_equal(back[v].values, ds[v].values)
        else:
            assert list(back[v].values.ravel()) == list(ds[v].values.ravel()), v
    for k in ("config_yaml", "seed", "model", "prior", "num_ranks", "chain_method", "created", "versions"):
        assert back.attrs[k] == ds.attrs[k], k
    assert not list(tmp_path.glob("*.tmp"))


def test_build_validation_names_the_variable():
    a = make_arrays()
    a["z_score"] = a["z_score"][:, :1]
    with pytest.raises(ValueError, match="z_score.*parameter"):
        results.build_sbc_dataset(a, {"quantity": QUANT, "parameter": PARAMS}, ATTRS)
    a = make_arrays()
    a["bfmi"] = a["bfmi"][:-1]
    with pytest.raises(ValueError, match="bfmi.*replicate"):
        results.build_sbc_dataset(a, {"quantity": QUANT, "parameter": PARAMS}, ATTRS)
    a = make_arrays()
    a["posterior_sd"][3, 0] = np.nan  # replicate 3 did not fail: a silent NaN is refused
    with pytest.raises(ValueError, match="posterior_sd.*not marked failed"):
        results.build_sbc_dataset(a, {"quantity": QUANT, "parameter": PARAMS}, ATTRS)
    a = make_arrays()
    a["rank"][0, 0] = -1  # replicate 0 failed: its rank is a placeholder
    results.build_sbc_dataset(a, {"quantity": QUANT, "parameter": PARAMS}, ATTRS)
    a["rank"][2, 0] = 10
    with pytest.raises(ValueError, match="rank.*replicate 2"):
        results.build_sbc_dataset(a, {"quantity": QUANT, "parameter": PARAMS}, ATTRS)
    a = make_arrays()
    del a["failed"]
    with pytest.raises(ValueError, match="failed"):
        results.build_sbc_dataset(a, {"quantity": QUANT, "parameter": PARAMS}, ATTRS)
    with pytest.raises(ValueError, match="num_ranks"):
        results.build_sbc_dataset(make_arrays(), {"quantity": QUANT, "parameter": PARAMS}, {"seed": 1})
    with pytest.raises(ValueError, match="extra.*dims"):
        a = make_arrays()
        a["extra"] = np.zeros(6)
        results.build_sbc_dataset(a, {"quantity": QUANT, "parameter": PARAMS}, ATTRS)
    a = make_arrays()
    a["extra"] = (("replicate",), np.arange(6.0))
    ds = results.build_sbc_dataset(a, {"quantity": QUANT, "parameter": PARAMS}, ATTRS)
    assert ds["extra"].dims == ("replicate",)
    # a quadrature's error_estimate may be inf (no estimate: its walk was cut short), never NaN
    a = make_arrays()
    a["error_estimate"] = (("replicate",), np.array([np.nan, 0.001, np.inf, 0.002, 0.003, 0.004]))
    ds = results.build_sbc_dataset(a, {"quantity": QUANT, "parameter": PARAMS}, ATTRS)
    assert np.isinf(ds["error_estimate"].values[2])
    a["error_estimate"][1][3] = np.nan
    with pytest.raises(ValueError, match="error_estimate.*not marked failed"):
        results.build_sbc_dataset(a, {"quantity": QUANT, "parameter": PARAMS}, ATTRS)
    a["error_estimate"][1][3] = 0.0
    a["extra"] = (("replicate",), np.array([0.0, 1.0, np.inf, 1.0, 1.0, 1.0]))  # elsewhere inf is refused
    with pytest.raises(ValueError, match="extra.*not marked failed"):
        results.build_sbc_dataset(a, {"quantity": QUANT, "parameter": PARAMS}, ATTRS)


def test_chunks_atomic_resume_and_merge_order(tmp_path):
    run = tmp_path / "run"
    assert results.finished_chunks(run) == set()
    # write chunks out of order; replicate coords are global indices
    for idx in (2, 0):
        results.write_chunk(make_ds(replicate=np.arange(idx * 6, idx * 6 + 6), seed=idx), run, idx)
    # a killed write: a temp file from a dead process (pid 999999999 cannot exist) is ignored...
    leftover = run / ".chunk_00001.nc.999999999.abc123.tmp"
    leftover.write_bytes(b"partial garbage")
    assert results.finished_chunks(run, clean=False) == {0, 2}
    assert leftover.exists()
    # ...and cleaned
    assert results.finished_chunks(run) == {0, 2}
    assert not leftover.exists()
    with pytest.raises(ValueError, match=r"missing chunk\(s\) \[1\]"):
        results.merge_chunks(run, expected=3)
    results.write_chunk(make_ds(replicate=np.arange(6, 12), seed=1), run, 1)
    merged = results.merge_chunks(run, expected=3)
    np.testing.assert_array_equal(merged["replicate"].values, np.arange(18))
    np.testing.assert_array_equal(merged["true"].values[6:12], make_ds(replicate=np.arange(6, 12), seed=1)["true"].values)
    assert merged["failed"].dtype == bool and merged.sizes["replicate"] == 18
    assert merged.attrs["num_ranks"] == 9 and merged.attrs["chunks"] == 3
    # overwrite is atomic: the new content replaces the old
    results.write_chunk(make_ds(replicate=np.arange(6), seed=42), run, 0)
    np.testing.assert_array_equal(results.load_chunk(run, 0)["true"].values, make_ds(seed=42)["true"].values)


def test_merge_rejects_inconsistent_and_bad_files(tmp_path):
    run = tmp_path / "run"
    results.write_chunk(make_ds(replicate=np.arange(6)), run, 0)
    results.write_chunk(make_ds(replicate=np.arange(6)), run, 1)
    with pytest.raises(ValueError, match="repeat replicate"):
        results.merge_chunks(run)
    results.write_chunk(make_ds(replicate=np.arange(6, 12), c=3), run, 1)
    with pytest.raises(ValueError, match="chunk 1.*chain"):
        results.merge_chunks(run)
    (run / "chunk_00001.nc").write_bytes(b"not a netcdf file")
    with pytest.raises(ValueError, match="chunk_00001.nc.*not a readable"):
        results.merge_chunks(run)
    with pytest.raises(ValueError, match="missing"):
        results.load_chunk(run, 7)
    with pytest.raises(ValueError, match="does not exist"):
        results.load_dataset(tmp_path / "nope.nc")


def test_load_measurements_netcdf_and_csv(tmp_path):
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(20, 3)), rng.normal(size=3)
    y = x @ w
    nc = tmp_path / "m.nc"
    xr.Dataset({"x": (("obs", "input"), x), "w": (("input",), w), "y": (("obs",), y)}).to_netcdf(nc)
    for got, want in zip(results.load_measurements(nc), (x, w, y)):
        np.testing.assert_array_equal(got, want)

    csv = tmp_path / "m.csv"
    cols = {f"x_{i}": x[:, i] for i in (2, 0, 1)}  # any column order
    cols["y"] = y
    import pandas as pd

    pd.DataFrame(cols).to_csv(csv, index=False)
    with pytest.raises(ValueError, match="m_w.csv.*does not exist"):
        results.load_measurements(csv)
    pd.DataFrame({f"w_{i}": [w[i]] for i in range(3)}).to_csv(tmp_path / "m_w.csv", index=False)
    for got, want in zip(results.load_measurements(csv), (x, w, y)):
        np.testing.assert_allclose(got, want, rtol=1e-15)

    bad = pd.DataFrame(cols)
    bad.loc[3, "y"] = np.nan
    bad.to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"m.csv: y contains 1 non-finite value\(s\) \(NaN or inf\)"):
        results.load_measurements(csv)
    pd.DataFrame({"x_0": [1.0], "x_2": [1.0], "y": [0.0]}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match="without gaps"):
        results.load_measurements(csv)
    pd.DataFrame({"x_0": [1.0]}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match="missing column 'y'"):
        results.load_measurements(csv)
    xr.Dataset({"x": (("obs", "input"), x), "y": (("obs",), y)}).to_netcdf(tmp_path / "n.nc")
    with pytest.raises(ValueError, match=r"missing variable\(s\) \['w'\]"):
        results.load_measurements(tmp_path / "n.nc")
    xr.Dataset({"x": (("obs", "input"), x), "w": (("k",), w[:2]), "y": (("obs",), y)}).to_netcdf(tmp_path / "s.nc")
    with pytest.raises(ValueError, match=r"s.nc: variable w has dims \('k',\); expected \('input',\)"):
        results.load_measurements(tmp_path / "s.nc")
    (tmp_path / "a.txt").write_text("1")
    with pytest.raises(ValueError, match="unsupported"):
        results.load_measurements(tmp_path / "a.txt")


def test_write_posterior_is_arviz_readable(tmp_path):
    import arviz as az

    rng = np.random.default_rng(0)
    samples = {"x_noise_lvl": rng.lognormal(size=(2, 50)), "w_noise_lvl": rng.lognormal(size=(2, 50))}
    st = {"diverging": np.zeros((2, 50), bool), "energy": rng.normal(size=(2, 50))}
    path = results.write_posterior(samples, st, tmp_path / "post.nc", observed={"y": rng.normal(size=10)},
                                   constant_data={"w": np.ones(3)})
    idata = az.from_netcdf(path)
    np.testing.assert_array_equal(idata.posterior["x_noise_lvl"].values, samples["x_noise_lvl"])
    assert idata.sample_stats["diverging"].dtype == bool
    assert "y" in idata.observed_data and "w" in idata.constant_data
    assert az.summary(idata).shape[0] == 2
    with pytest.raises(ValueError, match="x_noise_lvl.*NaN"):
        results.write_posterior({"x_noise_lvl": np.full((1, 5), np.nan)}, None, tmp_path / "p2.nc")
    assert not os.path.exists(tmp_path / "p2.nc")
    assert not list(Path(tmp_path).glob("*.tmp"))


def test_load_measurements_reads_dims_by_name(tmp_path):
    """Issue 12 item 7: x stored as (input, obs) with N = M was fitted transposed; now transposed
    by name, and unknown dims are refused naming the file and the variable."""
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(3, 3)), rng.normal(size=3)
    y = x @ w
    nc = tmp_path / "t.nc"
    xr.Dataset({"x": (("input", "obs"), x.T), "w": (("input",), w), "y": (("obs",), y)}).to_netcdf(nc)
    got_x, got_w, got_y = results.load_measurements(nc)
    np.testing.assert_array_equal(got_x, x)
    xr.Dataset({"x": (("a", "b"), x), "w": (("input",), w), "y": (("obs",), y)}).to_netcdf(tmp_path / "u.nc")
    with pytest.raises(ValueError, match=r"u.nc: variable x has dims \('a', 'b'\)"):
        results.load_measurements(tmp_path / "u.nc")


def test_non_numeric_values_name_file_and_variable(tmp_path):
    x, w = np.ones((2, 2)), np.ones(2)
    nc = tmp_path / "s.nc"
    xr.Dataset({"x": (("obs", "input"), x), "w": (("input",), w),
                "y": (("obs",), np.array(["1.0", "abc"], dtype=object))}).to_netcdf(nc)
    with pytest.raises(ValueError, match="s.nc: variable y is not numeric"):
        results.load_measurements(nc)
    import pandas as pd

    pd.DataFrame({"x_0": [1.0, 2.0], "y": ["0.5", "oops"]}).to_csv(tmp_path / "c.csv", index=False)
    pd.DataFrame({"w_0": [1.0]}).to_csv(tmp_path / "c_w.csv", index=False)
    with pytest.raises(ValueError, match="c.csv: column y is not numeric"):
        results.load_measurements(tmp_path / "c.csv")


def test_write_posterior_names_measurement_dims(tmp_path):
    import arviz as az

    rng = np.random.default_rng(0)
    samples = {"x_noise_lvl": rng.lognormal(size=(2, 20))}
    path = results.write_posterior(samples, None, tmp_path / "post.nc", observed={"y": rng.normal(size=7)},
                                   constant_data={"x": rng.normal(size=(7, 3)), "w": np.ones(3)})
    idata = az.from_netcdf(path)
    assert idata.observed_data["y"].dims == ("obs",)
    assert idata.constant_data["x"].dims == ("obs", "input")
    assert idata.constant_data["w"].dims == ("input",)


def test_run_lock_refuses_or_waits(tmp_path):
    """Two runs in one folder: the second refuses at once (one line, naming the holder), or
    waits for the first with wait=True. flock locks belong to the open file, so a second open in
    this process contends exactly as another process would."""
    import threading

    run = tmp_path / "run"
    with results.run_lock(run) as lock_file:
        assert lock_file.read_text().strip() == str(os.getpid())
        with pytest.raises(results.RunLocked, match=f"in use by another run \\(pid {os.getpid()}\\)") as err:
            with results.run_lock(run):
                pass
        assert "\n" not in str(err.value)
    with results.run_lock(run):  # released: free again
        pass
    order = []
    release = threading.Event()
    held = threading.Event()

    def first():
        with results.run_lock(run):
            held.set()
            release.wait(30)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    assert held.wait(30)
    threading.Timer(0.2, release.set).start()
    with results.run_lock(run, wait=True):
        order.append("second in")
    t.join(30)
    assert order == ["first done", "second in"]


def _quadrature_like_ds(failed_idx=(1,)):
    rng = np.random.default_rng(3)
    s, l_ = 40, 19
    failed = np.zeros(s, bool)
    failed[list(failed_idx)] = True
    rank = rng.integers(0, l_ + 1, size=(s, 2))
    rank[failed] = -1
    z = rng.normal(size=(s, 2))
    z[failed] = np.nan
    arrays = {"true": rng.normal(size=(s, 2)), "rank": rank, "failed": failed,
              "error": np.array(["no finite point" if f else "" for f in failed], dtype=object),
              "z_score": z, "contraction": np.where(failed[:, None], np.nan, rng.uniform(0.5, 1, size=(s, 2))),
              "log_marginal": (("replicate",), np.where(failed, np.nan, rng.normal(size=s))),
              "certified": (("replicate",), ~failed)}
    return results.build_sbc_dataset(arrays, {"quantity": PARAMS, "parameter": PARAMS},
                                     {"num_ranks": l_, "inference": "quadrature"},
                                     descriptions={"log_marginal": "log evidence"})


def test_quadrature_results_without_nuts_fields_round_trip(tmp_path):
    ds = _quadrature_like_ds()
    assert not {"diverging", "bfmi", "tree_depth_hits", "step_size", "n_steps"} & set(ds.variables)
    back = results.load_dataset(results.save_dataset(ds, tmp_path / "results.nc"))
    assert back["log_marginal"].attrs["description"] == "log evidence"
    assert back.attrs["inference"] == "quadrature" and back["rank"].values[1, 0] == -1


def test_summarize_run_row():
    from noisydot_sbc import sbc

    ds = _quadrature_like_ds(failed_idx=(1, 5))
    row = results.summarize_run(ds)
    ok = ~ds["failed"].values
    r = ds["rank"].values[ok]
    assert row["replicates"] == 40 and row["failed"] == 2 and row["inference"] == "quadrature"
    assert row["ecdf_p_x_noise_lvl"] == pytest.approx(sbc.ecdf_uniformity(r[:, 0], 19).p_value)
    # L = 19: normalised ranks (r + 1/2)/20 in (0.05, 0.95) means r in 1..18: 18 of 20 values
    assert row["coverage90_expected"] == pytest.approx(0.9)
    assert row["coverage90_w_noise_lvl"] == pytest.approx(np.mean((r[:, 1] >= 1) & (r[:, 1] <= 18)))
    z = ds["z_score"].values[ok, 0]
    assert row["z_mean_x_noise_lvl"] == pytest.approx(z.mean()) and row["z_sd_x_noise_lvl"] == pytest.approx(z.std(ddof=1))
    assert row["contraction_w_noise_lvl"] == pytest.approx(np.median(ds["contraction"].values[ok, 1]))
    assert np.isnan(row["divergent_fraction"]) and np.isnan(row["seconds_per_fit"])
    nuts = make_ds()
    row = results.summarize_run(nuts)
    ok = ~nuts["failed"].values
    assert row["divergent_fraction"] == pytest.approx(np.mean(nuts["diverging"].values[ok] > 0))
    assert row["seconds_per_fit"] == pytest.approx(nuts["wall_time_share"].values[ok].mean())


def test_sweep_summary_builds_on_summarize_run(tmp_path):
    paths = []
    for i, (model, prior) in enumerate([("gaussian", "strong"), ("marginal", "strong"), ("gaussian", "weak")]):
        ds = make_ds(seed=i)
        ds.attrs.update(model=model, prior=prior)
        rng = np.random.default_rng(i)
        ds = results.add_variables(ds, {"corr_log": (("replicate",), rng.uniform(-1, 1, 6)),
                                        "multimodal": (("replicate",), rng.uniform(size=6) < 0.5),
                                        "contraction_log": (("replicate", "parameter"), rng.uniform(size=(6, 2)))})
        paths.append(results.save_dataset(ds, tmp_path / f"{model}-{prior}" / "results.nc"))
    sw = results.sweep_summary(results.find_runs(tmp_path))
    assert list(sw["model"].values) == ["marginal", "gaussian"] and list(sw["prior"].values) == ["strong", "weak"]
    row = results.summarize_run(paths[2])
    cell = sw.sel(model="gaussian", prior="weak")
    assert float(cell["ecdf_p"].sel(quantity="log_lik")) == row["ecdf_p_log_lik"]
    assert float(cell["divergent_fraction"]) == row["divergent_fraction"]
    assert float(cell["contraction_w"]) == row["contraction_log_w_noise_lvl"]
    assert float(cell["failed_fraction"]) == pytest.approx(1 / 6)
    assert np.isnan(sw["n_replicates"].sel(model="marginal", prior="weak"))  # no such run
    from noisydot_sbc import plots

    plots.plot_sweep_summary(sw).savefig(tmp_path / "sweep.png")
