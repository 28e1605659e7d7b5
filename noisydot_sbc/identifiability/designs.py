"""Design ranking: which candidate input sets carry the most information about the noise levels.

One job: :func:`rank_designs` orders candidate input sets by the information they carry about
σ_w (accounting for the nuisance σ_x) or by log det of the information, at a point or averaged
over prior draws (Bayesian design).  The information itself comes from :mod:`.fisher`.

Criteria are explained in docs/identifiability.md.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import jax
import jax.numpy as jnp

from .._validation import as_finite_array, check_design, check_positive
from ..models import PARAMS
from .fisher import check_mc_args, default_logpdf, fim_mc_draws_jit, fim_mc_jit, raise_if_nonfinite


def _crit_values(info):
    """(log det I, efficient information about log σ_w) for a stack of 2×2 matrices, numpy."""
    info = np.asarray(info, dtype=float)
    a, b, d = info[..., 0, 0], info[..., 0, 1], info[..., 1, 1]
    det = a * d - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        logdet = np.where(det > 0, np.log(np.where(det > 0, det, 1.0)), -np.inf)
        eff_w = np.where((a > 0) & (det > 0), d - b * b / np.where(a > 0, a, 1.0), 0.0)
    return logdet, eff_w


def rank_designs(
    key,
    candidates,
    w,
    x_noise_lvl=None,
    w_noise_lvl=None,
    y_noise=0.0,
    criterion: str = "sigma_w",
    *,
    prior_draws: dict | None = None,
    num_sims: int = 32,
    logpdf: Callable | None = None,
    batch_size: int = 16,
) -> list[dict]:
    """Rank candidate input sets (each x_c of shape (N_c, M)) for the weights ``w``; best first.

    criterion:
      - ``"sigma_w"``: utility = E[log I_eff,w], I_eff,w = I_ww − I_wx²/I_xx, the information
        about log σ_w left once σ_x is estimated too (= 1/CRB variance of log σ_w).
      - ``"D"``: utility = E[log det I] (D-optimal: smallest joint confidence ellipse).
    The expectation is over ``prior_draws`` (dict with 1-D arrays "x_noise_lvl", "w_noise_lvl";
    Bayesian design) or, without it, the point (x_noise_lvl, w_noise_lvl).  Every candidate uses
    the same key (common random numbers).  Each entry reports: index, utility, criterion, n_obs,
    log_det_information, efficient_information_w, crb_sd_log_w_noise_lvl (all averaged over draws
    where applicable, the CRB sd as exp(−E[log I_eff,w]/2)), condition_number (median over draws).
    Singular information gives utility −inf (ranked last), never NaN.
    """
    if criterion not in ("sigma_w", "D"):
        raise ValueError(f"criterion must be 'sigma_w' or 'D', got {criterion!r}")
    if isinstance(candidates, (np.ndarray, jax.Array)) or not hasattr(candidates, "__len__") or len(candidates) == 0:
        raise ValueError("candidates must be a non-empty list of x arrays, each of shape (N_c, M)")
    as_finite_array("w", w, ndim=1)
    for i, xc in enumerate(candidates):
        try:
            check_design(xc, w)
        except ValueError as err:
            raise ValueError(f"candidates[{i}]: {err}") from err
    check_positive("y_noise", y_noise, allow_zero=True)
    check_mc_args(num_sims, batch_size, "true")
    if prior_draws is None:
        if x_noise_lvl is None or w_noise_lvl is None:
            raise ValueError("x_noise_lvl and w_noise_lvl are required when prior_draws is not given")
        check_positive("x_noise_lvl", x_noise_lvl)
        check_positive("w_noise_lvl", w_noise_lvl)
        sx = np.atleast_1d(np.asarray(x_noise_lvl, dtype=float))
        sw = np.atleast_1d(np.asarray(w_noise_lvl, dtype=float))
        if sx.shape != (1,) or sw.shape != (1,):
            raise ValueError("x_noise_lvl and w_noise_lvl must be scalars; use prior_draws for several values")
    else:
        if not isinstance(prior_draws, dict) or any(p not in prior_draws for p in PARAMS):
            raise ValueError(f"prior_draws must be a dict with keys {PARAMS}")
        sx = np.asarray(prior_draws["x_noise_lvl"], dtype=float).reshape(-1)
        sw = np.asarray(prior_draws["w_noise_lvl"], dtype=float).reshape(-1)
        if sx.size == 0 or sx.shape != sw.shape:
            raise ValueError(
                f"prior_draws: x_noise_lvl and w_noise_lvl must be non-empty and the same length, "
                f"got {sx.shape} and {sw.shape}"
            )
        check_positive("prior_draws['x_noise_lvl']", sx)
        check_positive("prior_draws['w_noise_lvl']", sw)
    if logpdf is None:
        logpdf = default_logpdf()
    w = jnp.asarray(w)
    thetas = jnp.log(jnp.stack([jnp.asarray(sx, dtype=w.dtype), jnp.asarray(sw, dtype=w.dtype)], axis=-1))
    out = []
    for i, xc in enumerate(candidates):
        xc = jnp.asarray(xc, dtype=w.dtype)
        static = dict(logpdf=logpdf, num_sims=int(num_sims), batch_size=int(batch_size), simulator="true")
        y_n = jnp.asarray(y_noise, dtype=w.dtype)
        if thetas.shape[0] == 1:  # same compiled function as expected_fisher_information
            info = fim_mc_jit(key, xc, w, thetas[0], y_n, **static)[0][None]
        else:
            info, _ = fim_mc_draws_jit(key, xc, w, thetas, y_n, **static)
        raise_if_nonfinite(info, f"rank_designs: candidates[{i}]")
        logdet, eff_w = _crit_values(info)
        with np.errstate(divide="ignore"):
            log_eff = np.where(eff_w > 0, np.log(np.where(eff_w > 0, eff_w, 1.0)), -np.inf)
        mean_log_eff = float(np.mean(log_eff))
        evals = np.linalg.eigvalsh(np.asarray(info, dtype=float))
        with np.errstate(divide="ignore"):
            cond = np.where(evals[:, 0] > 0, evals[:, 1] / np.where(evals[:, 0] > 0, evals[:, 0], 1.0), np.inf)
        entry = {
            "index": i,
            "criterion": criterion,
            "n_obs": int(xc.shape[0]),
            "log_det_information": float(np.mean(logdet)),
            "efficient_information_w": float(np.mean(eff_w)),
            "crb_sd_log_w_noise_lvl": float(np.exp(-0.5 * mean_log_eff)),
            "condition_number": float(np.median(cond)),
            "num_prior_draws": int(sx.size),
        }
        entry["utility"] = mean_log_eff if criterion == "sigma_w" else entry["log_det_information"]
        out.append(entry)
    return sorted(out, key=lambda e: -e["utility"])
