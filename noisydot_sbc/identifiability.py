"""Identifiability of the two noise levels: Fisher information, posterior degeneracy, design ranking.

"Can σ_x and σ_w be told apart from my data?"  Three complementary answers:

1. Before any data: the expected Fisher information of θ = (log σ_x, log σ_w) for a design
   (x, w) at given noise levels (:func:`expected_fisher_information`, Monte Carlo over the TRUE
   process, any per-observation log-density; :func:`gaussian_fisher_information`, closed form
   for the moment-matched Gaussian).  Its weakest eigenvector is the direction of the ridge
   along which the data cannot distinguish the two noise sources.
2. After a fit: :func:`posterior_degeneracy` (one posterior) and
   :func:`posterior_degeneracy_batch` (an SBC run, leading replicate axis) report posterior
   correlation, contraction against the prior, z-scores, multimodality and prior-domination flags.
3. Choosing a design: :func:`rank_designs` orders candidate input sets by the information they
   carry about σ_w (accounting for the nuisance σ_x) or by log det of the information, at a point
   or averaged over prior draws (Bayesian design).

Formulas and thresholds are explained in docs/identifiability.md.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import jax
import jax.numpy as jnp
import scipy.integrate
import scipy.stats

from ._validation import as_array, as_finite_array, check_design, check_positive
from .diagnostics import THRESHOLDS, chain_separation, rhat
from .likelihoods import moments
from .models import PARAMS
from .priors import Prior, ScalePrior
from .sbc import zscore_contraction
from .simulate import simulate_y_unchecked

THETA_NAMES = ("log_x_noise_lvl", "log_w_noise_lvl")

# Thresholds: the project's one table (diagnostics.THRESHOLDS; reasons in docs/identifiability.md).
RHAT_THRESHOLD = THRESHOLDS["r_hat"]  # split rank-normalised R-hat above this: chains disagree
CHAIN_SEPARATION_THRESHOLD = THRESHOLDS["chain_separation"]  # chain means this many within-chain sds apart
SIGN_FRACTION_THRESHOLD = THRESHOLDS["sign_fraction"]  # more than 1% of draws of the minority sign: ±σ modes
PRIOR_DOMINATED_THRESHOLD = THRESHOLDS["prior_dominated"]  # log-scale contraction below this


# --------------------------------------------------------------------------------------------
# Fisher information
# --------------------------------------------------------------------------------------------
class FisherResult(NamedTuple):
    """Fisher information of θ = (log σ_x, log σ_w) for one design and one noise setting.

    information:     (2, 2) expected Fisher information (sum over observations), order THETA_NAMES.
    mcse:            (2, 2) Monte Carlo standard error of each entry (zeros for closed forms).
    eigenvalues:     (2,) ascending.
    eigenvectors:    (2, 2) unit eigenvectors as columns, matching ``eigenvalues``.
    condition_number: largest / smallest eigenvalue (inf when the smallest is <= 0).
    ridge_direction: (2,) unit eigenvector of the weakest eigenvalue, sign chosen so that its
                     log σ_x component is >= 0: moving θ along it changes the data least.
    crb_sd:          (2,) Cramér–Rao lower bounds on the sd of unbiased estimates of log σ_x and
                     log σ_w (sqrt of diag of the inverse information; inf when singular).
                     For log σ, sd ≈ relative sd of σ.
    crb_corr:        correlation of the two estimates implied by the inverse information.
    efficient_information_w: I_ww − I_wx²/I_xx, the information about log σ_w that remains once
                     σ_x is unknown (1 / crb_sd[1]²).
    num_sims:        Monte Carlo simulations used (0 for closed forms).
    """

    information: jax.Array
    mcse: jax.Array
    eigenvalues: jax.Array
    eigenvectors: jax.Array
    condition_number: jax.Array
    ridge_direction: jax.Array
    crb_sd: jax.Array
    crb_corr: jax.Array
    efficient_information_w: jax.Array
    num_sims: int


def summarize_information(information, mcse=None, num_sims: int = 0) -> FisherResult:
    """Eigen-decomposition and Cramér–Rao summaries of a 2×2 information matrix.

    Singular or indefinite matrices give condition_number = inf and crb_sd = inf (never NaN);
    crb_corr is then ±1 (the sign of −I_xw).
    """
    info = jnp.asarray(information)
    if info.shape != (2, 2):
        raise ValueError(f"information must have shape (2, 2), got {info.shape}")
    as_finite_array("information", info)
    info = 0.5 * (info + info.T)
    mcse = jnp.zeros_like(info) if mcse is None else jnp.asarray(mcse, dtype=info.dtype)
    evals, evecs = jnp.linalg.eigh(info)
    ridge = evecs[:, 0]
    ridge = jnp.where(ridge[0] < 0, -ridge, ridge)
    cond = jnp.where(evals[0] > 0, evals[1] / jnp.where(evals[0] > 0, evals[0], 1.0), jnp.inf)
    a, b, d = info[0, 0], info[0, 1], info[1, 1]
    det = a * d - b * b
    # det relative to the scale of the matrix: treat rounding-level determinants as singular.
    tiny = jnp.finfo(info.dtype).eps * 16 * jnp.maximum(a * d, jnp.finfo(info.dtype).tiny)
    regular = det > tiny
    safe_det = jnp.where(regular, det, 1.0)
    crb_var = jnp.stack([d / safe_det, a / safe_det])
    crb_sd = jnp.where(regular, jnp.sqrt(jnp.abs(crb_var)), jnp.inf)
    denom = jnp.sqrt(jnp.maximum(a * d, jnp.finfo(info.dtype).tiny))
    crb_corr = jnp.clip(jnp.where(regular, -b / denom, -jnp.sign(b) + (b == 0)), -1.0, 1.0)
    safe_a = jnp.where(a > 0, a, 1.0)
    eff_w = jnp.where(a > 0, d - b * b / safe_a, 0.0)
    eff_w = jnp.where(regular, eff_w, 0.0)
    return FisherResult(
        information=info,
        mcse=mcse,
        eigenvalues=evals,
        eigenvectors=evecs,
        condition_number=cond,
        ridge_direction=ridge,
        crb_sd=crb_sd,
        crb_corr=crb_corr,
        efficient_information_w=eff_w,
        num_sims=int(num_sims),
    )


def _variance_gradients(x, w, x_noise_lvl, w_noise_lvl, y_noise):
    """Gaussian variance v_n and its gradient w.r.t. θ = (log σ_x, log σ_w), closed form.

    v_n = σ_w² A_n + σ_x² (1 + σ_w²) B + σ_y²,  A_n = Σ_i x_ni² w_i²,  B = Σ_i w_i²
    ∂v_n/∂log σ_x = 2 σ_x² (1 + σ_w²) B,         ∂v_n/∂log σ_w = 2 σ_w² (A_n + σ_x² B)
    """
    w2 = w * w
    a_n = (x * x) @ w2
    b = jnp.sum(w2)
    sx2, sw2 = x_noise_lvl**2, w_noise_lvl**2
    v = sw2 * a_n + sx2 * (1.0 + sw2) * b + y_noise**2
    dv_dx = jnp.broadcast_to(2.0 * sx2 * (1.0 + sw2) * b, a_n.shape)
    dv_dw = 2.0 * sw2 * (a_n + sx2 * b)
    return v, jnp.stack([dv_dx, dv_dw], axis=-1)


def gaussian_fisher_information(x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0) -> FisherResult:
    """Closed-form Fisher information of θ under the moment-matched Gaussian model.

    For y_n ~ N(μ_n, v_n(θ)) with μ_n free of θ:  I = ½ Σ_n ∇log v_n ∇log v_nᵀ.
    Each observation contributes a rank-one matrix along ∇log v_n, so I is singular exactly when
    all ∇log v_n are parallel — e.g. when A_n = Σ_i x_ni² w_i² is the same for every n.
    """
    check_design(x, w)
    check_positive("x_noise_lvl", x_noise_lvl)
    check_positive("w_noise_lvl", w_noise_lvl)
    check_positive("y_noise", y_noise, allow_zero=True)
    x, w = jnp.asarray(x), jnp.asarray(w)
    v, dv = _variance_gradients(x, w, x_noise_lvl, w_noise_lvl, y_noise)
    g = dv / v[:, None]
    return summarize_information(0.5 * g.T @ g)


def _default_logpdf():
    from . import likelihoods

    fn = getattr(likelihoods, "noisydot_logpdf", None)
    if fn is None:  # pragma: no cover - only while likelihoods.py is being written
        raise RuntimeError(
            "noisydot_sbc.likelihoods.noisydot_logpdf is not available; pass logpdf= explicitly "
            "(e.g. likelihoods.gaussian_logpdf)"
        )
    return fn


def _simulate(key, x, w, sx, sw, y_noise, simulator):
    if simulator == "true":
        return simulate_y_unchecked(key, x, w, sx, sw, y_noise)
    mean, var = moments(x, w, sx, sw, y_noise)
    return mean + jnp.sqrt(var) * jax.random.normal(key, mean.shape, dtype=x.dtype)


def _per_sim_information(key, x, w, theta, y_noise, logpdf, simulator):
    """Σ_n s_n s_nᵀ for one simulated data set, s_n the per-observation score w.r.t. θ.

    Observations are independent, so E[Σ_n s_n s_nᵀ] is the Fisher information of the data set;
    dropping the zero-mean cross terms s_n s_mᵀ (n ≠ m) leaves it unbiased with lower variance.
    """
    sx, sw = jnp.exp(theta[0]), jnp.exp(theta[1])
    y = _simulate(key, x, w, sx, sw, y_noise, simulator)

    def lp(th, yn, xn):
        return jnp.sum(logpdf(yn[None], xn[None, :], w, jnp.exp(th[0]), jnp.exp(th[1]), y_noise))

    scores = jax.vmap(jax.grad(lp), in_axes=(None, 0, 0))(theta, y, x)  # (N, 2)
    return scores.T @ scores


def _fim_mc(key, x, w, theta, y_noise, *, logpdf, num_sims, batch_size, simulator):
    keys = jax.random.split(key, num_sims)
    per_sim = jax.lax.map(
        lambda k: _per_sim_information(k, x, w, theta, y_noise, logpdf, simulator),
        keys,
        batch_size=min(batch_size, num_sims),
    )
    mean = jnp.mean(per_sim, axis=0)
    mcse = jnp.std(per_sim, axis=0, ddof=1) / jnp.sqrt(num_sims)
    return mean, mcse


_fim_mc_jit = jax.jit(_fim_mc, static_argnames=("logpdf", "num_sims", "batch_size", "simulator"))
def _fim_mc_draws(key, x, w, thetas, y_noise, *, logpdf, num_sims, batch_size, simulator):
    """:func:`_fim_mc` for a stack of θ (K, 2), same simulation keys for every θ."""
    return jax.vmap(
        lambda th: _fim_mc(key, x, w, th, y_noise, logpdf=logpdf, num_sims=num_sims,
                           batch_size=batch_size, simulator=simulator)
    )(thetas)


_fim_mc_draws_jit = jax.jit(_fim_mc_draws, static_argnames=("logpdf", "num_sims", "batch_size", "simulator"))


def _check_mc_args(num_sims, batch_size, simulator):
    if not isinstance(num_sims, (int, np.integer)) or num_sims < 2:
        raise ValueError(f"num_sims must be an integer >= 2 (the MC error needs two), got {num_sims!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if simulator not in ("true", "gaussian"):
        raise ValueError(f"simulator must be 'true' or 'gaussian', got {simulator!r}")


def _raise_if_nonfinite(arr, what):
    bad = ~np.isfinite(np.asarray(arr))
    if bad.any():
        raise FloatingPointError(
            f"{what}: {int(bad.sum())} non-finite entries; the log-density or its gradient is not "
            "finite for some simulated y (check the likelihood's accuracy in this noise regime)"
        )


def expected_fisher_information(
    key,
    x,
    w,
    x_noise_lvl,
    w_noise_lvl,
    y_noise=0.0,
    num_sims: int = 64,
    logpdf: Callable | None = None,
    *,
    batch_size: int = 16,
    simulator: str = "true",
) -> FisherResult:
    """Monte Carlo expected Fisher information of θ = (log σ_x, log σ_w) for the design (x, w).

    I(θ) = E_y[ Σ_n s_n s_nᵀ ],  s_n = ∇_θ log p(y_n | x_n, w, θ),
    with y simulated ``num_sims`` times from the TRUE process (``simulator="true"``; or from the
    moment-matched Gaussian with ``simulator="gaussian"``, for checks).  ``logpdf`` is a
    per-observation log-density ``logpdf(y, x, w, x_noise_lvl, w_noise_lvl, y_noise) -> (N,)``;
    default: the exact ``likelihoods.noisydot_logpdf``.  Simulations run ``batch_size`` at a time
    (vmap inside ``lax.map``) to bound memory.  Per-observation noise only (independent rows).
    """
    check_design(x, w)
    check_positive("x_noise_lvl", x_noise_lvl)
    check_positive("w_noise_lvl", w_noise_lvl)
    check_positive("y_noise", y_noise, allow_zero=True)
    _check_mc_args(num_sims, batch_size, simulator)
    if logpdf is None:
        logpdf = _default_logpdf()
    if not callable(logpdf):
        raise ValueError(f"logpdf must be callable, got {logpdf!r}")
    x, w = jnp.asarray(x), jnp.asarray(w)
    theta = jnp.log(jnp.asarray([x_noise_lvl, w_noise_lvl], dtype=x.dtype))
    info, mcse = _fim_mc_jit(
        key, x, w, theta, jnp.asarray(y_noise, dtype=x.dtype),
        logpdf=logpdf, num_sims=int(num_sims), batch_size=int(batch_size), simulator=simulator,
    )
    _raise_if_nonfinite(info, "expected_fisher_information")
    return summarize_information(info, mcse, num_sims)


# --------------------------------------------------------------------------------------------
# Design ranking
# --------------------------------------------------------------------------------------------
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
    _check_mc_args(num_sims, batch_size, "true")
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
        logpdf = _default_logpdf()
    w = jnp.asarray(w)
    thetas = jnp.log(jnp.stack([jnp.asarray(sx, dtype=w.dtype), jnp.asarray(sw, dtype=w.dtype)], axis=-1))
    out = []
    for i, xc in enumerate(candidates):
        xc = jnp.asarray(xc, dtype=w.dtype)
        static = dict(logpdf=logpdf, num_sims=int(num_sims), batch_size=int(batch_size), simulator="true")
        y_n = jnp.asarray(y_noise, dtype=w.dtype)
        if thetas.shape[0] == 1:  # same compiled function as expected_fisher_information
            info = _fim_mc_jit(key, xc, w, thetas[0], y_n, **static)[0][None]
        else:
            info, _ = _fim_mc_draws_jit(key, xc, w, thetas, y_n, **static)
        _raise_if_nonfinite(info, f"rank_designs: candidates[{i}]")
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


# --------------------------------------------------------------------------------------------
# Posterior diagnostics
# --------------------------------------------------------------------------------------------
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
