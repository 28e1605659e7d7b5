import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from noisydot_sbc import plots, results, sbc

QUANT = ["x_noise_lvl", "w_noise_lvl", "log_lik"]
PARAMS = ["x_noise_lvl", "w_noise_lvl"]
S, L = 120, 19


@pytest.fixture(scope="module")
def ds():
    rng = np.random.default_rng(0)
    failed = np.zeros(S, bool)
    failed[:2] = True
    arr = {
        "true": rng.normal(size=(S, 3)),
        "rank": rng.integers(0, L + 1, size=(S, 3)),
        "z_score": rng.normal(size=(S, 2)),
        "contraction": rng.uniform(0.2, 1.0, size=(S, 2)),
        "diverging": rng.poisson(0.5, size=S),
        "r_hat": 1 + rng.uniform(0, 0.02, size=(S, 2)),
        "ess_bulk": rng.uniform(100, 900, size=(S, 2)),
        "ess_tail": rng.uniform(100, 900, size=(S, 2)),
        "bfmi": rng.uniform(0.2, 1.5, size=(S, 2)),
        "failed": failed,
    }
    arr["z_score"][failed] = np.nan
    arr["rank"][failed] = -1  # a failed replicate's rank is a placeholder: plots must leave it out
    return results.build_sbc_dataset(arr, {"quantity": QUANT, "parameter": PARAMS}, {"num_ranks": L})


def _visible_axes(fig):
    return [a for a in fig.axes if a.get_visible()]


def test_plot_ecdf_has_band_and_curves(ds, tmp_path):
    fig = plots.plot_ecdf(ds, difference=True, split_divergent=True)
    assert isinstance(fig, Figure)
    axes = _visible_axes(fig)
    assert len(axes) == len(QUANT)
    band = sbc.ecdf_simultaneous_band(S - 2, L)  # failed replicates excluded
    for ax, q in zip(axes, QUANT):
        assert q in ax.get_title() and "p" in ax.get_title()
        polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(polys) == 1
        # band edges (2 lines) + all fits + no-divergence fits
        assert len(ax.lines) == 4
        upper = ax.lines[1].get_ydata()
        np.testing.assert_allclose(upper[1:-1], band.upper_diff)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0] == "95% simultaneous band" and any("no divergences" in s for s in labels)
    assert "118 replicates, 2 failed excluded" in fig._suptitle.get_text()
    fig.savefig(tmp_path / "ecdf.png")
    assert (tmp_path / "ecdf.png").stat().st_size > 10_000
    fig2 = plots.plot_ecdf(ds, difference=False)
    assert len(_visible_axes(fig2)) == 3 and len(fig2.axes[0].lines) == 4  # band edges, curve, diagonal


def test_plot_rank_histograms_band(ds, tmp_path):
    from scipy import stats

    fig = plots.plot_rank_histograms(ds, n_bins=10)
    axes = _visible_axes(fig)
    assert len(axes) == 3
    lo, hi = stats.binom.ppf([0.005, 0.995], S - 2, 0.1)
    for ax, q in zip(axes, QUANT):
        ys = sorted({float(l.get_ydata()[0]) for l in ax.lines})
        np.testing.assert_allclose(ys, sorted([lo, hi, (S - 2) / 10]))
        assert sum(p.get_height() for p in ax.containers[0]) == S - 2  # histogram bars
    with pytest.raises(ValueError, match="n_bins"):
        plots.plot_rank_histograms(ds, n_bins=7)
    assert "2 failed excluded" in fig._suptitle.get_text()
    fig.savefig(tmp_path / "hist.png")


def test_plot_zscore_contraction_and_diagnostics(ds, tmp_path):
    fig = plots.plot_zscore_contraction(ds)
    assert len(_visible_axes(fig)) == 2
    n_points = sum(c.get_offsets().shape[0] for c in fig.axes[0].collections if c.get_offsets().shape[0] > 0
                   and not isinstance(c, PolyCollection))
    assert n_points == S - 2
    fig.savefig(tmp_path / "zc.png")
    fig = plots.plot_diagnostics(ds)
    assert len(_visible_axes(fig)) == 5
    titles = [a.get_title() for a in fig.axes]
    assert any("R-hat" in t for t in titles) and any("E-BFMI" in t for t in titles)
    assert "118 fits, 2 failed excluded" in fig._suptitle.get_text()
    rhat_ax = next(a for a in fig.axes if "R-hat" in a.get_title())
    vlines = [l for l in rhat_ax.lines if l.get_label().startswith("threshold")]
    assert [l.get_xdata()[0] for l in vlines] == [1.01]  # the threshold of diagnostics.THRESHOLDS
    fig.savefig(tmp_path / "diag.png")
    assert (tmp_path / "diag.png").stat().st_size > 10_000


def test_plots_reject_incomplete_dataset(ds):
    with pytest.raises(ValueError, match="z_score"):
        plots.plot_zscore_contraction(ds.drop_vars("z_score"))
    bad = ds.copy()
    bad["failed"] = bad["failed"] | True
    with pytest.raises(ValueError, match="every replicate failed"):
        plots.plot_ecdf(bad)


def test_quadrature_dataset_plots_without_nuts_fields(tmp_path):
    """Independent exact draws, replicate-level declared stats only: every SBC plot works, the
    diagnostics figure shows the declared stats and no NUTS panel."""
    rng = np.random.default_rng(1)
    s = 60
    failed = np.zeros(s, bool)
    failed[3] = True
    rank = rng.integers(0, L + 1, size=(s, 2))
    rank[failed] = -1
    arr = {"true": rng.normal(size=(s, 2)), "rank": rank, "failed": failed,
           "z_score": np.where(failed[:, None], np.nan, rng.normal(size=(s, 2))),
           "contraction": np.where(failed[:, None], np.nan, rng.uniform(size=(s, 2))),
           "error_estimate": (("replicate",), np.where(failed, np.nan, rng.uniform(0, 1e-8, size=s))),
           "certified": (("replicate",), ~failed)}
    ds = results.build_sbc_dataset(arr, {"quantity": PARAMS, "parameter": PARAMS},
                                   {"num_ranks": L, "inference": "quadrature"},
                                   descriptions={"error_estimate": "quadrature error bound", "certified": "bound holds"})
    for fig in (plots.plot_ecdf(ds), plots.plot_rank_histograms(ds), plots.plot_zscore_contraction(ds)):
        assert "1 failed excluded" in fig._suptitle.get_text()
    split = plots.plot_ecdf(ds, split_divergent=True)  # no declared divergences: nothing to split, one curve
    assert len(split.axes[0].lines) == 3 and "1 failed excluded" in split._suptitle.get_text()
    fig = plots.plot_diagnostics(ds)
    titles = [a.get_title() for a in _visible_axes(fig)]
    assert titles == ["error_estimate", "certified: 100.0% True"]
    assert fig._suptitle.get_text().startswith("quadrature diagnostics over 59 fits")
    fig.savefig(tmp_path / "diag.png")
    with pytest.raises(ValueError, match="no diagnostics"):
        plots.plot_diagnostics(ds.drop_vars(["error_estimate", "certified"]))


def test_diagnostics_figure_from_declared_nuts_stats():
    """compute_diagnostics -> build_sbc_dataset(descriptions=diag.attrs()) -> plot_diagnostics:
    the NUTS panels, plus one per declared replicate-level statistic (n_leapfrog), not for
    reduced draw-level ones (lp, mean_tree_depth)."""
    from noisydot_sbc import diagnostics

    rng = np.random.default_rng(2)
    s, c, d = 12, 2, 60
    samples = {p: rng.normal(size=(s, c, d)) for p in PARAMS}
    st = {"diverging": rng.uniform(size=(s, c, d)) < 0.01, "tree_depth": np.full((s, c, d), 3),
          "energy": rng.normal(size=(s, c, d)), "lp": rng.normal(size=(s, c, d))}
    specs = (("diverging", "draw", "b", "divergent"), ("tree_depth", "draw", "i", "depth"),
             ("energy", "draw", "f", "energy"), ("lp", "draw", "f", "log density"),
             ("n_leapfrog", "replicate", "i", "leapfrog steps of all chains"))
    failed = np.zeros(s, bool)
    failed[0] = True
    diag = diagnostics.compute_diagnostics(samples, st, failed=failed, fit_stats={"n_leapfrog": np.arange(s) * 10},
                                           stat_specs=specs, max_tree_depth=10)
    arr = {"true": rng.normal(size=(s, 2)), "rank": np.where(failed[:, None], -1, rng.integers(0, L + 1, (s, 2))),
           "failed": failed, **diag.variables()}
    ds = results.build_sbc_dataset(arr, {"quantity": PARAMS, "parameter": PARAMS}, {"num_ranks": L},
                                   descriptions=diag.attrs())
    assert ds["n_leapfrog"].attrs["level"] == "replicate" and ds["lp"].attrs["level"] == "draw"
    titles = [a.get_title().split(" (")[0] for a in _visible_axes(plots.plot_diagnostics(ds))]
    assert titles == ["divergences per fit", "R-hat", "bulk ESS", "tail ESS", "E-BFMI per chain", "n_leapfrog"]


def test_plot_reference_ecdfs_of_the_discrepancy(ds, tmp_path):
    rng = np.random.default_rng(3)
    w1 = np.abs(rng.normal(0.1, 0.05, size=(S, 2)))
    shift = rng.normal(0, 0.2, size=(S, 2))
    w1[:2] = shift[:2] = np.nan  # the failed replicates
    ref = results.add_variables(ds, {"ref_w1_log": (("replicate", "parameter"), w1),
                                     "ref_median_shift": (("replicate", "parameter"), shift)})
    fig = plots.plot_reference(ref)
    axes = _visible_axes(fig)
    assert len(axes) == 2  # W1 and median shift (no sd ratio or KL stored)
    x_curve = axes[0].lines[0]
    np.testing.assert_allclose(x_curve.get_xdata(), np.sort(w1[2:, 0]))  # failed replicates left out
    np.testing.assert_allclose(x_curve.get_ydata()[-1], 1.0)
    assert f"{np.median(w1[2:, 0]):.3g}" in axes[0].get_legend().get_texts()[0].get_text()
    assert "118 replicates, 2 failed excluded" in fig._suptitle.get_text()
    fig.savefig(tmp_path / "ref.png")
    with pytest.raises(ValueError, match="ref_w1_log"):
        plots.plot_reference(ds)


def test_plot_study_ecdf_grid_places_cells(ds, tmp_path):
    fig = plots.plot_study_ecdf({("marginal/nuts", "M=1"): ds, ("gaussian/nuts", "M=8"): ds},
                                p_values={("marginal/nuts", "M=1"): "Holm p 0.5"})
    axes = fig.axes
    assert len(axes) == 4 and sum(a.get_visible() and a.axison for a in axes) == 2  # 2 of the 2x2 grid blank
    first = axes[0]
    assert first.get_title() == "S=118, Holm p 0.5"
    z, f = plots._ecdf_on_grid(np.asarray(ds["rank"].values)[2:, 0], L)
    np.testing.assert_allclose(first.lines[0].get_ydata(), f - z)  # quantity 1 of the cell, failed left out
    assert len(first.lines) == len(QUANT) + 1  # one curve per quantity + the zero line
    fig.savefig(tmp_path / "grid.png")
    with pytest.raises(ValueError, match="cells"):
        plots.plot_study_ecdf({})
