import warnings

import arviz as az
import numpy as np
import pytest

from noisydot_sbc import diagnostics

NUTS_SPECS = (
    ("diverging", "draw", "b", "divergent transition"),
    ("tree_depth", "draw", "i", "tree depth"),
    ("n_steps", "draw", "i", "leapfrog steps"),
    ("acceptance_rate", "draw", "f", "acceptance probability"),
    ("step_size", "draw", "f", "step size"),
    ("energy", "draw", "f", "Hamiltonian"),
)


def _stats(s, c, d, rng):
    return {
        "diverging": np.zeros((s, c, d), bool),
        "tree_depth": np.full((s, c, d), 3),
        "n_steps": np.full((s, c, d), 7),
        "acceptance_rate": np.full((s, c, d), 0.8),
        "step_size": np.full((s, c, d), 0.5),
        "energy": rng.normal(size=(s, c, d)),
    }


def _ar1(rng, c, d, phi):
    x = np.zeros((c, d))
    e = rng.normal(size=(c, d))
    for t in range(1, d):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x


def _arviz(fn, a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([float(fn(x, **kw)) for x in a])


@pytest.mark.parametrize("c,d", [(4, 100), (2, 51), (3, 7)])
def test_rhat_ess_equal_arviz_replicate_by_replicate(c, d):
    """The vectorised R-hat / bulk / tail ESS equal arviz.rhat / arviz.ess on every replicate:
    iid, autocorrelated (AR(1), phi = 0.9), shifted chains, heavy ties, constant draws."""
    rng = np.random.default_rng(c * 100 + d)
    s = 12
    a = rng.normal(size=(s, c, d))
    a[1:4] = [_ar1(rng, c, d, 0.9) for _ in range(3)]
    a[4] += 2.0 * np.arange(c)[:, None]
    a[5] = np.round(a[5])
    a[6] = 1.0
    r, eb, et = diagnostics.rhat_ess(a)
    for got, want in ((r, _arviz(az.rhat, a)), (eb, _arviz(az.ess, a, method="bulk")),
                      (et, _arviz(az.ess, a, method="tail"))):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=1e-10)
    assert np.isnan(r[6]) and eb[6] == c * 2 * (d // 2)  # constant: R-hat undefined, ESS = size (ArviZ)
    assert r[4] > 1.1 and r[0] < 1.1


def test_rhat_single_chain_split_and_failed_rows():
    rng = np.random.default_rng(0)
    one = np.concatenate([rng.normal(size=250), rng.normal(size=250) + 5.0])
    iid = rng.normal(size=500)
    a = np.stack([one, iid, np.full(500, np.nan)])[:, None, :]
    failed = np.array([False, False, True])
    r, eb, et = diagnostics.rhat_ess(a, skip=failed)
    halves = np.stack([one[:250], one[250:]])
    assert r[0] == pytest.approx(float(az.rhat(halves)), rel=1e-12) and r[0] > 1.1
    assert r[1] < 1.02
    np.testing.assert_allclose(eb[:2], _arviz(az.ess, a[:2], method="bulk"), rtol=1e-10)
    assert np.all(np.isnan([r[2], eb[2], et[2]]))
    with pytest.raises(ValueError, match="replicate 2"):
        diagnostics.rhat_ess(a)  # NaN in a replicate not marked failed: an error, never a silent NaN
    with pytest.raises(ValueError, match="at least 8 draws"):
        diagnostics.rhat(np.zeros((1, 1, 6)))


def test_ebfmi_formula_on_constructed_energy():
    # Random walk energy: increments tiny relative to the spread -> E-BFMI near 0.
    # Alternating energy +1/-1: squared differences 4, variance 1 -> E-BFMI = 4 * (n-1) / n.
    n = 100
    walk = np.cumsum(np.full(n, 0.1))
    alt = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    e = np.stack([walk, alt])[None]
    b = diagnostics.ebfmi(e)
    expected_walk = (n - 1) * 0.01 / np.sum((walk - walk.mean()) ** 2)
    np.testing.assert_allclose(b[0], [expected_walk, 4 * (n - 1) / n])
    np.testing.assert_allclose(b[0], az.bfmi(e[0]))
    assert b[0, 0] < diagnostics.THRESHOLDS["bfmi"]


def test_chain_separation_analytic():
    # two chains, each alternating +-1 around means 0 and 6: within-chain sd = sqrt(n/(n-1)).
    n = 50
    alt = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    a = np.stack([np.stack([alt, alt + 6.0]), np.stack([alt, alt])])
    sep = diagnostics.chain_separation(a)
    np.testing.assert_allclose(sep, [6.0 / np.sqrt(n / (n - 1)), 0.0])


def test_compute_diagnostics_nuts_stats_counts_and_failed():
    rng = np.random.default_rng(1)
    s, c, d = 3, 2, 50
    st = _stats(s, c, d, rng)
    st["diverging"][0, 1, :4] = True
    st["tree_depth"][1, 0, :7] = 10
    st["step_size"][2, 1] = 0.25
    samples = {"x_noise_lvl": rng.normal(size=(s, c, d)), "w_noise_lvl": rng.normal(size=(s, c, d))}
    samples["x_noise_lvl"][2] = np.nan  # failed replicate: ignored, not an error
    st["energy"][2] = np.nan
    failed = np.array([False, False, True])
    out = diagnostics.compute_diagnostics(samples, st, max_tree_depth=10, failed=failed, stat_specs=NUTS_SPECS)
    assert out["parameter"] == ["x_noise_lvl", "w_noise_lvl"]
    np.testing.assert_array_equal(out["diverging"], [4, 0, -1])
    np.testing.assert_array_equal(out["tree_depth_hits"], [0, 7, -1])
    np.testing.assert_array_equal(out["n_steps"], [7 * c * d, 7 * c * d, -1])
    np.testing.assert_allclose(out["mean_tree_depth"][:2], [3.0, 3.0 + 7 * 7 / (c * d)])
    assert np.isnan(out["mean_tree_depth"][2])
    np.testing.assert_allclose(out["bfmi"][:2], [az.bfmi(st["energy"][i]) for i in range(2)])
    assert out["step_size"].shape == (s, c) and np.all(np.isnan(out["bfmi"][2]))
    np.testing.assert_allclose(out["r_hat"][:2, 1], _arviz(az.rhat, samples["w_noise_lvl"][:2]), rtol=1e-10)
    assert np.all(np.isnan(out["r_hat"][2]))
    np.testing.assert_array_equal(out["n_undefined"], [0, 0, 0])
    variables = out.variables()
    assert variables["bfmi"][0] == ("replicate", "chain") and variables["r_hat"][0] == ("replicate", "parameter")
    assert variables["diverging"][0] == ("replicate",) and "parameter" not in variables
    with pytest.raises(ValueError, match="replicate 2"):
        diagnostics.compute_diagnostics(samples, st, max_tree_depth=10, stat_specs=NUTS_SPECS)


def test_only_declared_stats_appear_quadrature_like_posterior():
    """A posterior of independent exact draws declaring replicate-level stats only: no R-hat/ESS,
    no NUTS fields; its declared stats come through with their kinds, failed rows masked."""
    rng = np.random.default_rng(2)
    s = 4
    samples = {"x_noise_lvl": rng.lognormal(size=(s, 1, 100)), "w_noise_lvl": rng.lognormal(size=(s, 1, 100))}
    specs = (("log_marginal", "replicate", "f", "log evidence"), ("error_estimate", "replicate", "f", "error"),
             ("certified", "replicate", "b", "error bound holds"), ("n_points", "replicate", "i", "grid points"))
    fit_stats = {"log_marginal": np.array([-3.0, -2.0, np.nan, -1.0]), "error_estimate": np.full(s, 1e-9),
                 "certified": np.array([True, True, True, False]), "n_points": np.array([900, 900, 0, 400])}
    failed = np.array([False, False, True, False])
    out = diagnostics.compute_diagnostics(samples, None, failed=failed, fit_stats=fit_stats, stat_specs=specs,
                                          independent_draws=True)
    assert set(out) == {"parameter", "log_marginal", "error_estimate", "certified", "n_points"}
    np.testing.assert_array_equal(out["certified"], [True, True, False, False])
    np.testing.assert_array_equal(out["n_points"], [900, 900, -1, 400])
    assert np.isnan(out["log_marginal"][2]) and out["log_marginal"][3] == -1.0
    assert out.descriptions["log_marginal"] == "log evidence"
    assert diagnostics.threshold_warnings(out, 0) == []
    # inf is a stated value (a quadrature's error_estimate when it has no estimate); NaN is refused
    fit_stats["error_estimate"] = np.array([1e-9, np.inf, np.nan, 1e-9])
    out = diagnostics.compute_diagnostics(samples, None, failed=failed, fit_stats=fit_stats, stat_specs=specs,
                                          independent_draws=True)
    assert out["error_estimate"][1] == np.inf and np.isnan(out["error_estimate"][2])
    fit_stats["error_estimate"] = np.array([np.nan, 1e-9, 1e-9, 1e-9])
    with pytest.raises(ValueError, match="error_estimate.*replicate 0"):
        diagnostics.compute_diagnostics(samples, None, failed=failed, fit_stats=fit_stats, stat_specs=specs,
                                        independent_draws=True)
    with pytest.raises(ValueError, match="undeclared"):
        diagnostics.compute_diagnostics(samples, {"lp": np.zeros((s, 1, 100))}, stat_specs=specs)
    # a kernel that declares only lp: no divergence or tree-depth fields, lp as a per-replicate mean
    out = diagnostics.compute_diagnostics(samples, {"lp": np.ones((s, 1, 100))},
                                          stat_specs=(("lp", "draw", "f", "log density"),))
    assert "diverging" not in out and "bfmi" not in out and out["lp"].tolist() == [1.0] * s
    assert out["r_hat"].shape == (s, 2)


def test_thresholds_and_warnings():
    t = diagnostics.THRESHOLDS
    assert t["r_hat"] == 1.01 and t["ess_bulk"] == 400 and t["bfmi"] == 0.3
    diag = {"parameter": ["x_noise_lvl", "w_noise_lvl"], "r_hat": np.array([[1.02, 1.005]]),
            "ess_bulk": np.array([[193.0, 900.0]]), "ess_tail": np.array([[500.0, np.nan]]),
            "diverging": np.array([3]), "bfmi": np.array([[0.9, 0.2]])}
    msgs = diagnostics.threshold_warnings(diag)
    assert msgs == ["R-hat of x_noise_lvl is 1.02 (> 1.01)", "bulk ESS of x_noise_lvl is 193 (< 400)",
                    "tail ESS of w_noise_lvl is undefined (constant or non-finite draws)",
                    "3 divergent transition(s)", "E-BFMI below 0.3 in chain(s) [1] (min 0.2)"]


def test_bad_inputs():
    rng = np.random.default_rng(0)
    st = _stats(2, 1, 10, rng)
    with pytest.raises(ValueError, match="max_tree_depth"):
        diagnostics.compute_diagnostics({"a": np.zeros((2, 1, 10))}, st, max_tree_depth=0)
    with pytest.raises(ValueError, match="kind"):
        diagnostics.compute_diagnostics({"a": np.zeros((2, 1, 10))}, None, stat_specs=(("x", "draw", "q", ""),))
    with pytest.raises(ValueError, match="draws"):
        diagnostics.rhat_ess(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="method"):
        diagnostics.ess(np.zeros((2, 2, 10)), method="median")
    np.testing.assert_allclose(diagnostics.wall_time_share(np.array([1, 3, -1]), 8.0), [2.0, 6.0, 0.0])


def test_compute_diagnostics_reads_a_posterior():
    """The inference layer's own Posterior/StatSpec: the diagnostics follow its declarations,
    its failed mask and its info["max_tree_depth"]."""
    from noisydot_sbc.inference import Posterior, StatSpec

    rng = np.random.default_rng(5)
    s, c, d = 3, 2, 40
    st = _stats(s, c, d, rng)
    st["tree_depth"][0, 0, :5] = 6
    samples = {"x_noise_lvl": rng.normal(size=(s, c, d)), "w_noise_lvl": rng.normal(size=(s, c, d))}
    samples["w_noise_lvl"][1] = np.nan
    specs = tuple(StatSpec(*t) for t in NUTS_SPECS) + (StatSpec("n_leapfrog", "replicate", "i", "all steps"),)
    post = Posterior(samples, st, {"n_leapfrog": np.array([10, 20, 30])}, specs, np.array([False, True, False]),
                     ["", "no finite initial point", ""], "nuts", {"max_tree_depth": 6}, False, 1.0, 0.5)
    out = diagnostics.compute_diagnostics(post, params=["x_noise_lvl", "w_noise_lvl"])
    np.testing.assert_array_equal(out["tree_depth_hits"], [5, -1, 0])
    np.testing.assert_array_equal(out["n_leapfrog"], [10, -1, 30])
    assert np.isnan(out["r_hat"][1]).all() and np.isfinite(out["r_hat"][[0, 2]]).all()
    assert out.descriptions["n_leapfrog"] == "all steps"
