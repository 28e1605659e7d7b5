"""SBC test quantities: a registry of named functions f(θ, data), selected by ``sbc.quantities``.

SBC ranks the true value of each test quantity among its posterior draws; any function of the
parameters and the data has uniform ranks under a correct posterior (Talts et al. 2018;
Modrák et al. 2023), and different functions see different failures. Each entry here is one
documented function; ``sbc.quantities: [x_noise_lvl, w_noise_lvl, log_lik, w_over_x]`` picks
them for a run (the ranks, uniformity tests and plots follow that order). To add one, write a
function below with the :func:`quantity` decorator and put its name in the config.

The call convention is the same for the truth and the draws:

- ``theta``: parameter name (:data:`noisydot_sbc.models.PARAMS`) -> array (S, L): L values
  per replicate (the L kept posterior draws, or L = 1 for the true value);
- ``data``: ``x`` (S, N, M), ``w`` (S, M), ``y`` (S, N) and the known readout noise ``y_noise``
  (a float);
- returns an array (S, L).

The task evaluates quantities only at finite θ (failed replicates are set aside before).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

DEFAULT = ("x_noise_lvl", "w_noise_lvl", "log_lik", "w_over_x")  # the quantities of a run unless configured


class Quantity(NamedTuple):
    """A registered test quantity: ``fn(theta, data) -> (S, L)`` and its one-line description."""

    name: str
    fn: Callable
    description: str


QUANTITIES: dict[str, Quantity] = {}


def quantity(fn: Callable) -> Callable:
    """Register ``fn`` as the test quantity called ``fn.__name__`` (its docstring describes it)."""
    doc = (fn.__doc__ or "").strip()
    if not doc:
        raise ValueError(f"test quantity {fn.__name__!r} needs a docstring saying what it measures")
    QUANTITIES[fn.__name__] = Quantity(fn.__name__, fn, doc.splitlines()[0])
    return fn


@quantity
def x_noise_lvl(theta, data):
    """The input noise level σ_x as sampled (signed under the negative-control naive prior)."""
    return theta["x_noise_lvl"]


@quantity
def w_noise_lvl(theta, data):
    """The relative weight noise level σ_w as sampled (signed under the naive prior)."""
    return theta["w_noise_lvl"]


@quantity
def w_over_x(theta, data):
    """The ratio |σ_w| / |σ_x|: the direction along the (σ_x, σ_w) ridge of weakly informative data."""
    return np.abs(theta["w_noise_lvl"]) / np.abs(theta["x_noise_lvl"])


@quantity
def log_lik(theta, data):
    """Σ_n log p(y_n | θ) under the EXACT marginal likelihood (for every model), a function of θ and y.

    A data-dependent quantity sees miscalibration that the parameters alone hide (Modrák et al.
    2023); using the exact likelihood for every model makes the three models' ranks test the same
    function of (θ, y).
    """
    from .likelihoods import loglik_grid

    # the two-phase grid evaluator: the fast pass for every (replicate, draw, observation), the
    # robust tiers only for what it could not certify (under vmap a robust tier's while_loop
    # rounds are paid by the whole batch: 10-20x slower where the posterior reaches heavy noise).
    # Per observation the same value as noisydot_logpdf; σ enter through |σ| as in the models.
    y, x, w = (np.asarray(data[k], dtype=float) for k in ("y", "x", "w"))
    sx, sw = np.abs(np.asarray(theta["x_noise_lvl"], float)), np.abs(np.asarray(theta["w_noise_lvl"], float))
    out = np.full(sx.shape, np.nan)  # NaN where the replicate cannot be evaluated: the caller masks it as failed
    ok = (np.isfinite(y).all(1) & np.isfinite(x).all((1, 2)) & np.isfinite(w).all(1) & np.any(w != 0, axis=1)
          & (np.isfinite(sx) & np.isfinite(sw) & (sx > 0) & (sw > 0)).all(1))
    if ok.any():
        out[ok] = loglik_grid(y[ok], x[ok], w[ok], sx[ok], sw[ok], float(data["y_noise"])).loglik
    return out


def get_quantities(names) -> tuple[str, ...]:
    """Check ``names`` (the ``sbc.quantities`` list) and return them as a tuple: distinct,
    non-empty, every one registered; else a ValueError naming ``sbc.quantities``."""
    if isinstance(names, str):
        names = [names]
    names = tuple(str(n) for n in names)
    if not names:
        raise ValueError("sbc.quantities must name at least one test quantity")
    if len(set(names)) != len(names):
        raise ValueError(f"sbc.quantities lists a test quantity twice: {list(names)}")
    unknown = [n for n in names if n not in QUANTITIES]
    if unknown:
        raise ValueError(f"sbc.quantities: unknown test quantity {unknown} (registered: {sorted(QUANTITIES)})")
    return names


def evaluate(names, theta: dict, data: dict) -> dict:
    """Evaluate the test quantities ``names`` at ``theta`` (name -> (S, L)); returns name -> (S, L)
    float arrays (possibly non-finite: the caller decides what a non-finite value means)."""
    names = get_quantities(names)
    shapes = {np.shape(v) for v in theta.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"theta must map every parameter to an (S, L) array, got shapes {sorted(shapes)}")
    shape = next(iter(shapes))
    out = {}
    for name in names:
        value = np.asarray(QUANTITIES[name].fn(theta, data), dtype=float)
        if value.shape != shape:
            raise ValueError(f"test quantity {name!r} returned shape {value.shape}, expected {shape}")
        out[name] = value
    return out
