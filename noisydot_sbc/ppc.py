"""Posterior predictive checks of a fit to measured data (used by ``task=fit``).

- :func:`posterior_predictive`: replicated data sets y_rep from the FITTED model's own
  predictive distribution (:attr:`noisydot_sbc.models.Model.predictive`) at evenly spaced
  posterior draws: the true process for the exact models, the moment-matched normal for the
  Gaussian approximation, so the check shows where an approximation misses the observed tails;
- :func:`ppc_summary`: PIT values of the observations among the replicates, and the fraction of
  standardised residuals beyond k sd (observed vs replicated) with its posterior predictive
  p-value.
"""
from __future__ import annotations

import numpy as np

from .models import PARAMS

TAIL_THRESHOLDS = (1.0, 2.0, 3.0, 4.0, 5.0)  # k: tails |z| > k sd compared, observed vs replicated


def _flat_abs(samples, name):
    if name not in samples:
        raise ValueError(f"samples is missing {name!r}")
    a = np.abs(np.asarray(samples[name], dtype=float)).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"samples[{name!r}] must be a non-empty array of finite draws")
    return a


def posterior_predictive(key, model, samples: dict, x, w, num: int) -> np.ndarray:
    """``num`` replicated data sets y_rep (num, N) from ``model.predictive`` at ``num`` posterior
    draws evenly spaced over the chain-major flattened ``samples`` (name -> (chain, draw));
    fewer when there are fewer draws."""
    import jax
    import jax.numpy as jnp

    if not isinstance(num, (int, np.integer)) or num < 1:
        raise ValueError(f"num must be a positive integer (task.ppc_draws), got {num!r}")
    if getattr(model, "predictive", None) is None:
        raise ValueError(f"model {getattr(model, 'name', model)!r} has no predictive simulator (models.build_model)")
    sx, sw = (_flat_abs(samples, p) for p in PARAMS)
    pick = np.linspace(0, sx.size - 1, min(num, sx.size)).round().astype(int)
    keys = jax.random.split(key, pick.size)
    x, w = jnp.asarray(x), jnp.asarray(w)
    one = lambda k, a, b: model.predictive(k, x, w, a, b)
    return np.asarray(jax.jit(jax.vmap(one))(keys, jnp.asarray(sx[pick], x.dtype), jnp.asarray(sw[pick], x.dtype)))


def ppc_summary(y, y_rep, x, w, samples: dict, y_noise: float) -> dict:
    """PIT values and tail exceedances of the standardised residuals, observed vs replicated.

    Residuals are standardised by the mean and sd of y under the moment-matched normal at the
    posterior median of (|σ_x|, |σ_w|), the same scale for observed and replicated data.
    Returns ``z_obs`` (N,), ``z_rep`` (draws, N), ``pit`` (N,), ``thresholds`` (T,),
    ``obs_exceed`` (T,), ``rep_exceed_mean``/``_lo``/``_hi`` (T,) (mean and 5%/95% quantiles
    over replicates) and ``tail_ppp`` (T,) = P(replicated fraction >= observed fraction).
    """
    from .likelihoods import moments

    y, y_rep = np.asarray(y, dtype=float), np.asarray(y_rep, dtype=float)
    if y.ndim != 1 or y_rep.ndim != 2 or y_rep.shape[1] != y.shape[0]:
        raise ValueError(f"y_rep must be (draws, {y.shape[0]}), got shape {y_rep.shape}")
    sx, sw = (float(np.median(_flat_abs(samples, p))) for p in PARAMS)
    mean, var = (np.asarray(a) for a in moments(x, w, sx, sw, y_noise))
    sd = np.sqrt(var)
    z_obs = (y - mean) / sd
    z_rep = (y_rep - mean) / sd
    pit = (np.sum(y_rep < y, axis=0) + 0.5 * np.sum(y_rep == y, axis=0)) / y_rep.shape[0]
    thresholds = np.array(TAIL_THRESHOLDS)
    obs_exceed = np.array([np.mean(np.abs(z_obs) > t) for t in thresholds])
    rep_exceed = np.array([np.mean(np.abs(z_rep) > t, axis=1) for t in thresholds])  # (T, draws)
    return {
        "z_obs": z_obs, "z_rep": z_rep, "pit": pit, "thresholds": thresholds,
        "obs_exceed": obs_exceed, "rep_exceed_mean": rep_exceed.mean(axis=1),
        "rep_exceed_lo": np.quantile(rep_exceed, 0.05, axis=1), "rep_exceed_hi": np.quantile(rep_exceed, 0.95, axis=1),
        "tail_ppp": np.mean(rep_exceed >= obs_exceed[:, None], axis=1),
    }
