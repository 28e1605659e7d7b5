"""Posterior degeneracy diagnostics: can σ_x and σ_w be told apart after a fit.

One job: :func:`posterior_degeneracy` (one posterior) and :func:`posterior_degeneracy_batch`
(an SBC run, leading replicate axis) report posterior correlation, contraction against the prior
(:func:`prior_variances`), z-scores, multimodality and prior-domination flags.

Formulas and thresholds are explained in docs/identifiability.md.
"""
from __future__ import annotations

import numpy as np
import scipy.integrate
import scipy.stats

from .._validation import as_array, check_positive
from ..diagnostics import THRESHOLDS, chain_separation, rhat
from ..models import PARAMS
from ..priors import Prior, ScalePrior
from ..sbc import zscore_contraction

# Thresholds: the project's one table (diagnostics.THRESHOLDS; reasons in docs/identifiability.md).
RHAT_THRESHOLD = THRESHOLDS["r_hat"]  # split rank-normalised R-hat above this: chains disagree
CHAIN_SEPARATION_THRESHOLD = THRESHOLDS["chain_separation"]  # chain means this many within-chain sds apart
SIGN_FRACTION_THRESHOLD = THRESHOLDS["sign_fraction"]  # more than 1% of draws of the minority sign: ±σ modes
PRIOR_DOMINATED_THRESHOLD = THRESHOLDS["prior_dominated"]  # log-scale contraction below this


def prior_variances(scale_prior: ScalePrior) -> tuple[float, float]:
    """(variance of σ, variance of log|σ|) under one component of the prior.

    lognormal(μ, s): ((e^{s²}−1) e^{2μ+s²}, s²);  halfnormal(s): (s²(1−2/π), π²/8);
    normal(μ, s): (s², Var log|σ| by quadrature; π²/8 when μ = 0).
    """
    fam, mu, s = scale_prior.family, float(scale_prior.loc), float(scale_prior.scale)
    if fam == "lognormal":
        return float(np.expm1(s * s) * np.exp(2 * mu + s * s)), s * s
    if fam == "halfnormal":
        return s * s * (1 - 2 / np.pi), np.pi**2 / 8
    if fam == "normal":
        if mu == 0.0:
            return s * s, np.pi**2 / 8
        pdf = scipy.stats.norm(mu, s).pdf
        lo, hi = mu - 40 * s, mu + 40 * s
        pts = [0.0] if lo < 0 < hi else None
        m1 = scipy.integrate.quad(lambda t: np.log(abs(t)) * pdf(t), lo, hi, points=pts, limit=200)[0]
        m2 = scipy.integrate.quad(lambda t: np.log(abs(t)) ** 2 * pdf(t), lo, hi, points=pts, limit=200)[0]
        return s * s, m2 - m1 * m1
    raise ValueError(f"prior family must be 'lognormal', 'normal' or 'halfnormal', got {fam!r}")


def _diagnostics(draws, prior, true, chain_sep_threshold, rhat_threshold, prior_dominated_threshold):
    """Shared core; draws: name -> (S, C, D) numpy arrays; returns dict of (S,) arrays.

    R-hat and chain separation come from :mod:`noisydot_sbc.diagnostics`, z-score and contraction
    from :func:`noisydot_sbc.sbc.zscore_contraction` (on σ and on log|σ|)."""
    if not isinstance(prior, Prior):
        raise ValueError(f"prior must be a noisydot_sbc.priors.Prior, got {type(prior).__name__}")
    if true is not None and (not hasattr(true, "keys") or any(p not in true for p in PARAMS)):
        raise ValueError(f"true must be a dict with keys {PARAMS}")
    res: dict = {"contraction": {}, "contraction_log": {}, "rhat": {}, "chain_separation": {},
                 "prior_dominated": {}, "sign_ambiguous": {}, "post_mean": {}, "post_sd": {}}
    if true is not None:
        res["z_score"], res["z_score_log"] = {}, {}
    logs = {}
    for p in PARAMS:
        a = draws[p]
        s_count = a.shape[0]
        flat = a.reshape(s_count, -1)
        neg_frac = np.mean(flat < 0, axis=1)
        minority = np.minimum(neg_frac, 1 - neg_frac)
        res["sign_ambiguous"][p] = minority > SIGN_FRACTION_THRESHOLD
        with np.errstate(divide="ignore"):
            la = np.log(np.abs(a))
        if not np.all(np.isfinite(la)):
            raise ValueError(f"draws[{p!r}] contains exact zeros; log σ is undefined")
        logs[p] = la
        lflat = la.reshape(s_count, -1)
        var_p, var_l = prior_variances(getattr(prior, p))
        if true is not None:
            t = np.asarray(true[p], dtype=float).reshape(-1)
            if t.shape[0] not in (1, s_count):
                raise ValueError(f"true[{p!r}] must be a scalar or have {s_count} values, got shape {t.shape}")
            check_positive(f"true[{p!r}]", t)
            t = np.broadcast_to(t, (s_count,))
        else:
            t = np.ones(s_count)  # placeholder: only the contraction is kept
        with np.errstate(divide="ignore", invalid="ignore"):
            sd = flat.std(axis=1, ddof=1)
            sd_l = lflat.std(axis=1, ddof=1)
        constant = (sd == 0) | (sd_l == 0)
        z, c = zscore_contraction(t, flat, var_p, failed=constant)
        z_l, c_l = zscore_contraction(np.log(t), lflat, var_l, failed=constant)
        # constant draws (a chain that never moved): contraction 1, z-score ±inf (0 at the truth)
        c, c_l = np.where(constant, 1.0, c), np.where(constant, 1.0, c_l)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(constant, (flat.mean(axis=1) - t) / sd, z)
            z_l = np.where(constant, (lflat.mean(axis=1) - np.log(t)) / sd_l, z_l)
        res["contraction"][p], res["contraction_log"][p] = c, c_l
        res["prior_dominated"][p] = c_l < prior_dominated_threshold
        res["post_mean"][p], res["post_sd"][p] = flat.mean(axis=1), sd
        r = rhat(a)
        res["rhat"][p] = np.where(np.isfinite(r), r, np.inf)  # a chain that never moved: inf, not NaN
        res["chain_separation"][p] = chain_separation(a)
        if true is not None:
            res["z_score"][p], res["z_score_log"][p] = z, z_l
    lx = logs["x_noise_lvl"].reshape(logs["x_noise_lvl"].shape[0], -1)
    lw = logs["w_noise_lvl"].reshape(lx.shape[0], -1)
    lxc, lwc = lx - lx.mean(axis=1, keepdims=True), lw - lw.mean(axis=1, keepdims=True)
    denom = np.sqrt((lxc**2).sum(axis=1) * (lwc**2).sum(axis=1))
    res["corr_log"] = np.where(denom > 0, (lxc * lwc).sum(axis=1) / np.where(denom > 0, denom, 1.0), 0.0)
    multi = np.zeros(lx.shape[0], dtype=bool)
    for p in PARAMS:
        multi |= (res["rhat"][p] > rhat_threshold) | (res["chain_separation"][p] > chain_sep_threshold)
        multi |= res["sign_ambiguous"][p]
    res["multimodal"] = multi
    res["thresholds"] = {
        "rhat": rhat_threshold,
        "chain_separation": chain_sep_threshold,
        "sign_fraction": SIGN_FRACTION_THRESHOLD,
        "prior_dominated_contraction_log": prior_dominated_threshold,
    }
    return res


def _check_draws(draws, batch):
    if not isinstance(draws, dict) or any(p not in draws for p in PARAMS):
        raise ValueError(f"draws must be a dict with keys {PARAMS}, got {type(draws).__name__}")
    dims = "(S, chain, draw)" if batch else "(chain, draw)"
    out = {}
    for p in PARAMS:
        arr = np.asarray(draws[p])
        if arr.ndim != (3 if batch else 2):
            raise ValueError(f"draws[{p!r}] must have shape {dims}, got {arr.shape}")
        arr = as_array(f"draws[{p!r}]", arr, kind="f")
        if arr.shape[-1] < 8:
            raise ValueError(f"draws[{p!r}] needs at least 8 draws per chain, got shape {arr.shape}")
        out[p] = arr
    if out["x_noise_lvl"].shape != out["w_noise_lvl"].shape:
        raise ValueError(
            f"draws['x_noise_lvl'] and draws['w_noise_lvl'] must have the same shape, got "
            f"{out['x_noise_lvl'].shape} and {out['w_noise_lvl'].shape}"
        )
    return out


def posterior_degeneracy(
    draws: dict,
    prior: Prior,
    true: dict | None = None,
    *,
    chain_sep_threshold: float = CHAIN_SEPARATION_THRESHOLD,
    rhat_threshold: float = RHAT_THRESHOLD,
    prior_dominated_threshold: float = PRIOR_DOMINATED_THRESHOLD,
) -> dict:
    """Degeneracy diagnostics of one posterior; draws: name -> (chain, draw) array.

    Returns a dict of plain floats/bools:
      corr_log                  posterior correlation of log σ_x and log σ_w (≈ −1: ridge);
      contraction[p]            1 − Var_post(σ)/Var_prior(σ);
      contraction_log[p]        1 − Var_post(log σ)/Var_prior(log σ) (log|σ| for sign-free priors);
      z_score[p], z_score_log[p] (posterior mean − true)/posterior sd, when ``true`` is given;
      rhat[p]                   rank-normalised split R-hat (arviz.rhat; one chain is split in two);
      chain_separation[p]       (max − min chain mean) / pooled within-chain sd;
      sign_ambiguous[p]         > 1% of the draws have the minority sign (±σ mirror modes);
      multimodal                any R-hat > rhat_threshold, separation > chain_sep_threshold, or
                                sign ambiguity;
      prior_dominated[p]        contraction_log < prior_dominated_threshold;
      post_mean[p], post_sd[p], thresholds.
    """
    d = _check_draws(draws, batch=False)
    d = {p: a[None] for p, a in d.items()}
    if true is not None and (not hasattr(true, "keys") or any(p not in true for p in PARAMS)):
        raise ValueError(f"true must be a dict with keys {PARAMS}")
    tr = None if true is None else {p: np.atleast_1d(np.asarray(true[p], dtype=float)) for p in PARAMS}
    if true is not None and any(tr[p].shape != (1,) for p in PARAMS):
        raise ValueError("true must map each parameter to a scalar")
    res = _diagnostics(d, prior, tr, chain_sep_threshold, rhat_threshold, prior_dominated_threshold)
    return _squeeze(res)


def _squeeze(res):
    out = {}
    for k, v in res.items():
        if k == "thresholds":
            out[k] = v
        elif isinstance(v, dict):
            out[k] = {p: _scalar(a) for p, a in v.items()}
        else:
            out[k] = _scalar(v)
    return out


def _scalar(a):
    a = np.asarray(a).reshape(-1)[0]
    return bool(a) if a.dtype == bool else float(a)


def posterior_degeneracy_batch(
    draws: dict,
    prior: Prior,
    true: dict | None = None,
    *,
    chain_sep_threshold: float = CHAIN_SEPARATION_THRESHOLD,
    rhat_threshold: float = RHAT_THRESHOLD,
    prior_dominated_threshold: float = PRIOR_DOMINATED_THRESHOLD,
) -> dict:
    """:func:`posterior_degeneracy` vectorised over replicates; draws: name -> (S, chain, draw).

    ``true`` maps each parameter to an array (S,) (the SBC ground truths).  Every entry of the
    result is an array (S,); R-hat is :func:`noisydot_sbc.diagnostics.rhat` (equal to arviz.rhat,
    vectorised over replicates).  Also returns summary fractions under ``"fraction"``.
    """
    d = _check_draws(draws, batch=True)
    res = _diagnostics(d, prior, true, chain_sep_threshold, rhat_threshold, prior_dominated_threshold)
    res["fraction"] = {
        "multimodal": float(np.mean(res["multimodal"])),
        **{f"prior_dominated_{p}": float(np.mean(res["prior_dominated"][p])) for p in PARAMS},
        "abs_corr_log_above_0.9": float(np.mean(np.abs(res["corr_log"]) > 0.9)),
    }
    return res
