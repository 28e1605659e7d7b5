"""The SBC test-quantity registry: each quantity's value, the call convention, the selection checks."""
import jax
import numpy as np
import pytest

from noisydot_sbc import quantities
from noisydot_sbc.likelihoods import moments
from noisydot_sbc.simulate import make_design, simulate_y

jax.config.update("jax_enable_x64", True)


S, N, M, L = 4, 20, 3, 19  # the shapes of the tiny SBC runs of test_tasks_sbc.py (one compile per session)


@pytest.fixture(scope="module")
def data():
    xs, ws, ys = [], [], []
    for s in range(S):
        kd, ky = jax.random.split(jax.random.PRNGKey(s))
        d = make_design(kd, N, M)
        xs.append(d.x), ws.append(d.w), ys.append(simulate_y(ky, d.x, d.w, 0.1, 1e-6))
    return {"x": np.stack(xs), "w": np.stack(ws), "y": np.stack(ys), "y_noise": 0.0}


_rng = np.random.default_rng(0)
THETA = {"x_noise_lvl": _rng.choice([-1, 1], (S, L)) * _rng.uniform(0.05, 0.2, (S, L)),
         "w_noise_lvl": _rng.choice([-1, 1], (S, L)) * _rng.uniform(0.05, 0.2, (S, L))}


def test_default_quantities_are_registered_and_documented():
    assert quantities.DEFAULT == ("x_noise_lvl", "w_noise_lvl", "log_lik", "w_over_x")
    for name in quantities.DEFAULT:
        q = quantities.QUANTITIES[name]
        assert q.name == name and len(q.description) > 10


def test_values(data):
    out = quantities.evaluate(quantities.DEFAULT, THETA, data)
    np.testing.assert_array_equal(out["x_noise_lvl"], THETA["x_noise_lvl"])
    np.testing.assert_array_equal(out["w_noise_lvl"], THETA["w_noise_lvl"])
    np.testing.assert_allclose(out["w_over_x"], np.abs(THETA["w_noise_lvl"]) / np.abs(THETA["x_noise_lvl"]))
    assert out["log_lik"].shape == (S, L) and np.all(np.isfinite(out["log_lik"]))


def test_log_lik_is_the_exact_log_likelihood_at_abs_sigma(data):
    """At σ_w = 1e-7 the exact density is the normal with the exact moments to ~1e-13 (the weight
    noise adds only O(σ_w²) non-Gaussian terms): an independent closed-form reference."""
    theta = {"x_noise_lvl": THETA["x_noise_lvl"], "w_noise_lvl": np.full((S, L), -1e-7)}
    out = quantities.evaluate(["log_lik"], theta, data)["log_lik"]
    for s in range(S):
        for l in (0, L - 1):
            mean, var = (np.asarray(a) for a in moments(data["x"][s], data["w"][s], abs(theta["x_noise_lvl"][s, l]),
                                                         1e-7, 0.0))
            ref = np.sum(-0.5 * np.log(2 * np.pi * var) - 0.5 * (data["y"][s] - mean) ** 2 / var)
            np.testing.assert_allclose(out[s, l], ref, rtol=1e-9)


def test_a_new_quantity_is_one_function(data):
    @quantities.quantity
    def sum_of_levels(theta, data):
        """|σ_x| + |σ_w| (a test-only quantity)."""
        return np.abs(theta["x_noise_lvl"]) + np.abs(theta["w_noise_lvl"])

    try:
        assert quantities.get_quantities(["sum_of_levels", "x_noise_lvl"]) == ("sum_of_levels", "x_noise_lvl")
        out = quantities.evaluate(["sum_of_levels"], THETA, data)
        np.testing.assert_allclose(out["sum_of_levels"], np.abs(THETA["x_noise_lvl"]) + np.abs(THETA["w_noise_lvl"]))
    finally:
        quantities.QUANTITIES.pop("sum_of_levels")


def test_undocumented_quantity_is_refused():
    with pytest.raises(ValueError, match="docstring"):
        quantities.quantity(lambda theta, data: theta["x_noise_lvl"])


@pytest.mark.parametrize("names, match", [([], "at least one"), (["x_noise_lvl", "x_noise_lvl"], "twice"),
                                          (["x_noise_lvl", "nope"], "unknown test quantity")])
def test_bad_selection_names_the_config_key(names, match):
    with pytest.raises(ValueError, match=f"sbc.quantities.*{match}|{match}"):
        quantities.get_quantities(names)


def test_bad_theta_shape(data):
    with pytest.raises(ValueError, match="theta"):
        quantities.evaluate(["x_noise_lvl"], {"x_noise_lvl": np.ones(3), "w_noise_lvl": np.ones(3)}, data)
