"""Priors on the two noise levels, selected by name (Hydra group ``prior/``).

The priors below are THE definition: :mod:`noisydot_sbc.config` registers each entry of
:data:`PRIORS` as an option of the ``prior`` config group (``python run.py prior=weak``). A new
prior is one more constant here (or a YAML file in ``conf/prior/`` starting with
``defaults: [base_prior, _self_]``).

- ``strong``: informative LogNormals around realistic device noise.
- ``weak``: the wide LogNormal(0, 5) / LogNormal(0, 2) of the original question.
- ``naive``: Normal priors on the scales. A scale with a Normal prior makes the
  posterior symmetric in ±σ and bimodal; it is kept ONLY as a labelled negative control.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist

PARAMS = ("x_noise_lvl", "w_noise_lvl")  # the two inferred parameters (site names); models re-exports it


FAMILIES = ("lognormal", "normal", "halfnormal")  # the prior families ScalePrior.distribution knows


class ScalePrior(NamedTuple):
    """Prior for one noise level: ``family`` is 'lognormal' (loc/scale of log σ) or 'normal'."""

    family: str
    loc: float
    scale: float

    def distribution(self):
        if self.family == "lognormal":
            return dist.LogNormal(self.loc, self.scale)
        if self.family == "normal":
            return dist.Normal(self.loc, self.scale)
        if self.family == "halfnormal":
            return dist.HalfNormal(self.scale)
        raise ValueError(f"prior family must be one of {FAMILIES}, got {self.family!r}")

    def log_density(self, s):
        """log p(s) of :meth:`distribution` at NumPy ``s`` (-inf outside its support), on the host.

        The NumPyro distribution is the definition; this twin (equal to it within 1e-13 relative,
        tested) exists because the quadrature evaluates the prior at a few hundred points at a time
        between exact-likelihood blocks: as a compiled JAX call it queued behind the other thread's
        XLA work, and ``scipy.stats``' frozen ``logpdf`` costs ~50 µs of argument handling per
        call (both measured: ~3 ms of thread time per fit at N = 200, M = 8), against ~10 µs here."""
        s = np.asarray(s, np.float64)
        norm = -math.log(self.scale) - 0.5 * math.log(2.0 * math.pi)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if self.family == "lognormal":
                pos = s > 0
                ls = np.log(np.where(pos, s, 1.0))
                return np.where(pos, norm - ls - 0.5 * ((ls - self.loc) / self.scale) ** 2, -np.inf)
            if self.family == "normal":
                return norm - 0.5 * ((s - self.loc) / self.scale) ** 2
            if self.family == "halfnormal":
                return np.where(s >= 0, math.log(2.0) + norm - 0.5 * (s / self.scale) ** 2, -np.inf)
        raise ValueError(f"prior family must be one of {FAMILIES}, got {self.family!r}")


class Prior(NamedTuple):
    """Joint prior on (x_noise_lvl, w_noise_lvl); independent components."""

    name: str
    x_noise_lvl: ScalePrior
    w_noise_lvl: ScalePrior
    negative_control: bool = False

    def sample_sites(self):
        """Sample both noise levels as NumPyro sites (inside a model). Returns (σ_x, σ_w)."""
        sx = numpyro.sample("x_noise_lvl", self.x_noise_lvl.distribution())
        sw = numpyro.sample("w_noise_lvl", self.w_noise_lvl.distribution())
        return sx, sw

    def sample(self, key, shape=()):
        """Draw ``shape`` independent prior draws: dict name -> array of ``shape``."""
        kx, kw = jax.random.split(key)
        return {
            "x_noise_lvl": self.x_noise_lvl.distribution().sample(kx, shape),
            "w_noise_lvl": self.w_noise_lvl.distribution().sample(kw, shape),
        }

    def log_prob(self, x_noise_lvl, w_noise_lvl):
        return self.x_noise_lvl.distribution().log_prob(x_noise_lvl) + self.w_noise_lvl.distribution().log_prob(
            w_noise_lvl
        )


# Realistic analog-device noise: a few percent relative weight noise, input noise ~0.1 of
# an O(1) input.  median σ_x = 0.1 (90% in 0.04..0.26), median σ_w = 0.05 (90% in 0.02..0.13).
STRONG = Prior(
    "strong",
    x_noise_lvl=ScalePrior("lognormal", -2.302585092994046, 0.6),  # log(0.1) as the runs so far used it
    w_noise_lvl=ScalePrior("lognormal", math.log(0.05), 0.6),
)
WEAK = Prior(
    "weak",
    x_noise_lvl=ScalePrior("lognormal", 0.0, 5.0),
    w_noise_lvl=ScalePrior("lognormal", 0.0, 2.0),
)
NAIVE = Prior(
    "naive",
    x_noise_lvl=ScalePrior("normal", 0.0, 0.3),
    w_noise_lvl=ScalePrior("normal", 0.0, 0.3),
    negative_control=True,
)

PRIORS = {p.name: p for p in (STRONG, WEAK, NAIVE)}


def get_prior(name_or_cfg) -> Prior:
    """A prior by name, or built from a mapping like the Hydra ``prior`` group::

        {name: strong, x_noise_lvl: {family: lognormal, loc: -2.3, scale: 0.6}, w_noise_lvl: {...}}
    """
    if isinstance(name_or_cfg, Prior):
        return name_or_cfg
    if isinstance(name_or_cfg, str):
        if name_or_cfg not in PRIORS:
            raise ValueError(f"prior must be one of {sorted(PRIORS)}, got {name_or_cfg!r}")
        return PRIORS[name_or_cfg]
    cfg = dict(name_or_cfg)
    try:
        return Prior(
            name=str(cfg["name"]),
            x_noise_lvl=ScalePrior(**dict(cfg["x_noise_lvl"])),
            w_noise_lvl=ScalePrior(**dict(cfg["w_noise_lvl"])),
            negative_control=bool(cfg.get("negative_control", False)),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"prior config is malformed ({err}); expected name, x_noise_lvl and w_noise_lvl") from err
