"""The SBC test-quantity registry: each quantity's value, the call convention, the selection checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noisydot_sbc import quantities
from noisydot_sbc.likelihoods import noisydot_logpdf
from noisydot_sbc.simulate import make_design, simulate_y

jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="module")
def data():
    xs, ws, ys = [], [], []
    for s in range(2):
        kd, ky = jax.random.split(jax.random.PRNGKey(s))
        d = make_design(kd, 6, 2)
        xs.append(d.x), ws.append(d.w), ys.append(simulate_y(ky, d.x, d.w, 0.1, 0.05))
    return {"x": np.stack(xs), "w": np.stack(ws), "y": np.stack(ys), "y_noise": 0.01}


THETA = {"x_noise_lvl": np.array([[0.1, -0.2, 0.3], [0.05, 0.1, 0.2]]),
         "w_noise_lvl": np.array([[0.05, 0.1, -0.4], [0.2, 0.02, 0.07]])}


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
    ref = jax.jit(lambda y, x, w, sx, sw: jnp.sum(noisydot_logpdf(y, x, w, sx, sw, 0.01)))
    for s, l in ((0, 1), (1, 2)):  # the exact log-likelihood at |σ|, summed over observations
        expected = ref(data["y"][s], data["x"][s], data["w"][s], abs(THETA["x_noise_lvl"][s, l]),
                       abs(THETA["w_noise_lvl"][s, l]))
        np.testing.assert_allclose(out["log_lik"][s, l], float(expected), rtol=1e-12)


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
