import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noisydot_sbc.likelihoods import moments
from noisydot_sbc.simulate import make_design, simulate_y


jax.config.update("jax_enable_x64", True)


def _design(n=5, m=3, seed=0):
    d = make_design(jax.random.PRNGKey(seed), n, m)
    return np.asarray(d.x), np.asarray(d.w)


def test_reproducible_bit_for_bit():
    x, w = _design()
    k = jax.random.PRNGKey(42)
    a = simulate_y(k, x, w, 0.1, 0.05)
    b = simulate_y(k, x, w, 0.1, 0.05)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    c = simulate_y(jax.random.PRNGKey(43), x, w, 0.1, 0.05)
    assert not np.array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("y_noise", [0.0, 0.3])
def test_moments_match_monte_carlo(y_noise):
    x, w = _design(n=4, m=3)
    sx, sw = 0.4, 0.3
    keys = jax.random.split(jax.random.PRNGKey(1), 200_000)
    from noisydot_sbc.simulate import simulate_y_unchecked as _simulate_y

    ys = np.asarray(jax.vmap(lambda k: _simulate_y(k, jnp.asarray(x), jnp.asarray(w), sx, sw, y_noise))(keys))
    mean, var = moments(jnp.asarray(x), jnp.asarray(w), sx, sw, y_noise)
    se_mean = np.sqrt(np.asarray(var) / ys.shape[0])
    assert np.all(np.abs(ys.mean(0) - np.asarray(mean)) < 5 * se_mean)
    # relative s.e. of a sample variance ~ sqrt(2/n) (heavier tails: allow 5x that)
    assert np.allclose(ys.var(0), np.asarray(var), rtol=15 * np.sqrt(2 / ys.shape[0]))


def test_shared_w_noise_correlates_observations():
    # with the weight noise drawn once per device, two observations with the same x are correlated
    x = np.ones((2, 1))
    w = np.array([1.0])
    from noisydot_sbc.simulate import simulate_y_unchecked as _simulate_y

    keys = jax.random.split(jax.random.PRNGKey(3), 20_000)
    shared = np.asarray(jax.vmap(lambda k: _simulate_y(k, jnp.asarray(x), jnp.asarray(w), 0.01, 0.5, 0.0, True))(keys))
    per_obs = np.asarray(jax.vmap(lambda k: _simulate_y(k, jnp.asarray(x), jnp.asarray(w), 0.01, 0.5, 0.0, False))(keys))
    assert np.corrcoef(shared.T)[0, 1] > 0.95
    assert abs(np.corrcoef(per_obs.T)[0, 1]) < 0.05


def test_magnitude_design_controls_spread():
    k = jax.random.PRNGKey(0)
    flat = make_design(k, 50, 4, x_dist="magnitude", x_spread=0.0)
    spread = make_design(k, 50, 4, x_dist="magnitude", x_spread=3.0)
    n_flat = np.linalg.norm(np.asarray(flat.x), axis=1)
    n_spread = np.linalg.norm(np.asarray(spread.x), axis=1)
    assert np.allclose(n_flat, 1.0)
    assert np.log(n_spread).std() > 0.5


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(x_noise_lvl=0.0), "x_noise_lvl"),
        (dict(w_noise_lvl=-1.0), "w_noise_lvl"),
        (dict(y_noise=-0.1), "y_noise"),
        (dict(x=np.full((3, 2), np.nan)), "x"),
        (dict(w=np.zeros(2)), "w"),
        (dict(w=np.ones(3)), "w"),
        (dict(x=np.zeros((0, 2))), "x"),
    ],
)
def test_bad_input_names_argument(kwargs, name):
    args = dict(x=np.ones((3, 2)), w=np.ones(2), x_noise_lvl=0.1, w_noise_lvl=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        simulate_y(jax.random.PRNGKey(0), **args)


def test_make_design_bad_input():
    with pytest.raises(ValueError, match="x_dist"):
        make_design(jax.random.PRNGKey(0), 3, 2, x_dist="cauchy")
    with pytest.raises(ValueError, match="n_obs"):
        make_design(jax.random.PRNGKey(0), 0, 2)


# ----------------------------------------------------------------------------- the SBC generator
from noisydot_sbc.priors import STRONG  # noqa: E402
from noisydot_sbc.simulate import design_kwargs, simulate_replicates, simulate_y_unchecked  # noqa: E402

DESIGN = {"n_obs": 7, "n_inputs": 3, "x_dist": "normal", "x_scale": 1.0, "x_spread": 1.0, "w_dist": "normal",
          "w_scale": 1.0, "new_design_per_replicate": True, "y_noise": 0.0, "shared_w_noise": False}


def test_a_replicate_id_is_the_same_replicate_in_any_chunk():
    root = jax.random.PRNGKey(7)
    data, truth = simulate_replicates(root, np.arange(6), DESIGN, STRONG)
    order = np.array([4, 2, 0, 5, 1, 3])  # another chunk holding the same ids (one compiled shape)
    part, part_truth = simulate_replicates(root, order, DESIGN, STRONG)
    for k in ("x", "w", "y"):
        np.testing.assert_array_equal(np.asarray(part[k]), np.asarray(data[k])[order])
    for p in ("x_noise_lvl", "w_noise_lvl"):
        np.testing.assert_array_equal(np.asarray(part_truth[p]), np.asarray(truth[p])[order])
    assert data["x"].shape == (6, 7, 3) and data["w"].shape == (6, 3) and data["y"].shape == (6, 7)
    assert len(np.unique(np.asarray(data["w"])[:, 0])) == 6  # a new design per replicate


def test_replicates_follow_the_prior_and_the_true_process():
    root = jax.random.PRNGKey(0)
    data, truth = simulate_replicates(root, np.arange(4000), dict(DESIGN, new_design_per_replicate=False), STRONG)
    # one design for all replicates when new_design_per_replicate is false
    assert np.all(np.asarray(data["w"]) == np.asarray(data["w"])[0])
    for p in ("x_noise_lvl", "w_noise_lvl"):
        logs = np.log(np.asarray(truth[p]))
        sp = getattr(STRONG, p)
        assert abs(logs.mean() - sp.loc) < 4 * sp.scale / np.sqrt(logs.size)
        assert abs(logs.std() - sp.scale) < 0.05 * sp.scale
    # replicate r's y is the true process at its truth, with the key the generator documents
    r = 5
    kd, kt, ky = jax.random.split(jax.random.fold_in(root, r), 3)
    y = simulate_y_unchecked(ky, data["x"][r], data["w"][r], truth["x_noise_lvl"][r], truth["w_noise_lvl"][r])
    np.testing.assert_allclose(np.asarray(y), np.asarray(data["y"][r]), rtol=1e-13)  # eager vs jit: ulps


def test_design_kwargs_reads_a_design_config():
    kw = design_kwargs(DESIGN, x_spread=3.0)
    assert kw == {"n_obs": 7, "n_inputs": 3, "x_dist": "normal", "x_scale": 1.0, "x_spread": 3.0, "w_dist": "normal",
                  "w_scale": 1.0}
    with pytest.raises(ValueError, match="design.w_scale"):
        design_kwargs({k: v for k, v in DESIGN.items() if k != "w_scale"})


@pytest.mark.parametrize("ids", [np.array([], dtype=int), np.array([-1]), np.array([0.5]), np.zeros((2, 2), int)])
def test_bad_replicate_ids(ids):
    with pytest.raises(ValueError, match="replicate_ids"):
        simulate_replicates(jax.random.PRNGKey(0), ids, DESIGN, STRONG)
