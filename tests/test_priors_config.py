from pathlib import Path

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from noisydot_sbc import config
from noisydot_sbc.priors import PRIORS, get_prior

CONF = Path(__file__).resolve().parents[1] / "conf"


def _compose(overrides=()):
    return config.compose(overrides)


@pytest.mark.parametrize("name", ["strong", "weak", "naive"])
def test_prior_group_is_the_library_constants(name):
    """The prior group's options are priors.PRIORS (defined once), bit for bit."""
    assert not (CONF / "prior").exists() or not list((CONF / "prior").glob(f"{name}.yaml"))
    cfg = OmegaConf.to_container(_compose([f"prior={name}"]).prior)
    from_cfg = get_prior(cfg)
    lib = PRIORS[name]
    assert from_cfg.name == lib.name
    assert from_cfg.negative_control == lib.negative_control
    for p in ("x_noise_lvl", "w_noise_lvl"):
        a, b = getattr(from_cfg, p), getattr(lib, p)
        assert a.family == b.family
        assert (a.loc, a.scale) == (b.loc, b.scale)


def test_strong_prior_is_positive_and_realistic():
    draws = PRIORS["strong"].sample(jax.random.PRNGKey(0), (20_000,))
    sx, sw = np.asarray(draws["x_noise_lvl"]), np.asarray(draws["w_noise_lvl"])
    assert (sx > 0).all() and (sw > 0).all()
    assert np.isclose(np.median(sx), 0.1, rtol=0.03)
    assert np.isclose(np.median(sw), 0.05, rtol=0.03)
    assert np.quantile(sw, 0.999) < 0.5  # inside the region where NoisyDot is certified to 1e-8


def test_naive_prior_is_labelled_negative_control():
    assert PRIORS["naive"].negative_control
    draws = PRIORS["naive"].sample(jax.random.PRNGKey(0), (1000,))
    assert (np.asarray(draws["x_noise_lvl"]) < 0).any()  # a Normal on a scale puts mass on σ < 0


def test_get_prior_bad_input():
    with pytest.raises(ValueError, match="prior"):
        get_prior("flat")
    with pytest.raises(ValueError, match="prior"):
        get_prior({"name": "x"})
    with pytest.raises(ValueError, match="family"):
        get_prior({"name": "x", "x_noise_lvl": {"family": "cauchy", "loc": 0, "scale": 1},
                   "w_noise_lvl": {"family": "lognormal", "loc": 0, "scale": 1}}).x_noise_lvl.distribution()


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model=latent", "prior=weak"],
        ["model=gaussian", "prior=naive", "design=default", "sbc=default"],
        ["task=fit"],
        ["experiment=three_models"],
    ],
)
def test_hydra_config_composes(overrides):
    cfg = _compose(overrides)
    assert cfg.task.name in ("sbc", "fit", "degeneracy")
    assert cfg.model.name in ("latent", "marginal", "gaussian")
    assert cfg.sampler.num_samples > 0
    assert cfg.sbc.num_replicates % 1 == 0
