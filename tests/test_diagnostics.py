import arviz as az
import numpy as np
import pytest

from noisydot_sbc import diagnostics


def _stats(s, c, d, rng):
    return {
        "diverging": np.zeros((s, c, d), bool),
        "tree_depth": np.full((s, c, d), 3),
        "n_steps": np.full((s, c, d), 7),
        "acceptance_rate": np.full((s, c, d), 0.8),
        "step_size": np.full((s, c, d), 0.5),
        "energy": rng.normal(size=(s, c, d)),
    }


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
    assert b[0, 0] < 0.01


def test_rhat_ess_match_arviz_and_detect_stuck_chains():
    rng = np.random.default_rng(0)
    iid = rng.normal(size=(4, 500))
    stuck = rng.normal(size=(4, 500)) + np.array([0.0, 0.0, 5.0, 5.0])[:, None]
    r, eb, et = diagnostics.rhat_ess(np.stack([iid, stuck]))
    assert abs(r[0] - 1.0) < 0.01
    assert r[1] > 1.1
    np.testing.assert_allclose(r, [az.rhat(iid), az.rhat(stuck)])
    np.testing.assert_allclose(eb, [az.ess(iid, method="bulk"), az.ess(stuck, method="bulk")])
    np.testing.assert_allclose(et, [az.ess(iid, method="tail"), az.ess(stuck, method="tail")])
    assert eb[0] > 1000 and eb[1] < 50
    # one chain: split into halves, a chain that jumps mode halfway is flagged
    one = np.concatenate([rng.normal(size=250), rng.normal(size=250) + 5.0])[None, None]
    r1, _, _ = diagnostics.rhat_ess(one)
    assert r1[0] > 1.1


def test_compute_diagnostics_counts_and_failed():
    rng = np.random.default_rng(1)
    s, c, d = 3, 2, 50
    st = _stats(s, c, d, rng)
    st["diverging"][0, 1, :4] = True
    st["tree_depth"][1, 0, :7] = 10
    st["step_size"][2, 1] = 0.25
    samples = {"x_noise_lvl": rng.normal(size=(s, c, d)), "w_noise_lvl": rng.normal(size=(s, c, d))}
    samples["x_noise_lvl"][2] = np.nan  # failed replicate: ignored, not an error
    failed = np.array([False, False, True])
    out = diagnostics.compute_diagnostics(samples, st, max_tree_depth=10, failed=failed)
    assert out["parameter"] == ["x_noise_lvl", "w_noise_lvl"]
    np.testing.assert_array_equal(out["diverging"], [4, 0, -1])
    np.testing.assert_array_equal(out["tree_depth_hits"], [0, 7, -1])
    np.testing.assert_array_equal(out["n_steps"], [7 * c * d, 7 * c * d, -1])
    np.testing.assert_allclose(out["mean_tree_depth"][:2], [3.0, 3.0 + 7 * 7 / (c * d)])
    assert np.isnan(out["mean_tree_depth"][2])
    assert out["step_size"].shape == (s, c) and out["bfmi"].shape == (s, c)
    assert out["r_hat"].shape == (s, 2) and np.all(np.isnan(out["r_hat"][2]))
    assert np.all(np.isfinite(out["ess_bulk"][:2]))
    np.testing.assert_array_equal(out["n_undefined"], [0, 0, 0])
    # NaN in a replicate that is NOT marked failed is an error, not a silent NaN
    with pytest.raises(ValueError, match="replicate 2"):
        diagnostics.compute_diagnostics(samples, st, max_tree_depth=10)


def test_bad_inputs():
    rng = np.random.default_rng(0)
    st = _stats(2, 1, 10, rng)
    with pytest.raises(ValueError, match="max_tree_depth"):
        diagnostics.compute_diagnostics({"a": np.zeros((2, 1, 10))}, st, max_tree_depth=0)
    del st["energy"]
    with pytest.raises(ValueError, match="energy"):
        diagnostics.compute_diagnostics({"a": np.zeros((2, 1, 10))}, st, max_tree_depth=10)
    with pytest.raises(ValueError, match="draws"):
        diagnostics.rhat_ess(np.zeros((2, 10)))
    np.testing.assert_allclose(diagnostics.wall_time_share(np.array([1, 3, -1]), 8.0), [2.0, 6.0, 0.0])
