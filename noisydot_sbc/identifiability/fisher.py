"""Fisher information of θ = (log σ_x, log σ_w) for a design (x, w): identifiability before any data.

One job: the information matrix and its summaries. :func:`expected_fisher_information` is the
Monte Carlo expected information over the TRUE process, for any per-observation log-density;
:func:`gaussian_fisher_information` the closed form for the moment-matched Gaussian;
:func:`summarize_information` the eigen-decomposition and Cramér–Rao summaries
(:class:`FisherResult`).  Its weakest eigenvector is the direction of the ridge along which the
data cannot distinguish the two noise sources.  The compiled Monte Carlo estimators
(:data:`fim_mc_jit`, and :data:`fim_mc_draws_jit` over a stack of θ) and their argument checks
are shared with :mod:`.designs`.

Formulas are explained in docs/identifiability.md.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import jax
import jax.numpy as jnp

from .._validation import as_finite_array, check_design, check_positive
from ..likelihoods import moments
from ..simulate import simulate_y_unchecked

THETA_NAMES = ("log_x_noise_lvl", "log_w_noise_lvl")


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


def default_logpdf():
    from .. import likelihoods

    fn = getattr(likelihoods, "noisydot_logpdf", None)
    if fn is None:  # pragma: no cover - likelihoods/exact.py defines it; a guard only
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


fim_mc_jit = jax.jit(_fim_mc, static_argnames=("logpdf", "num_sims", "batch_size", "simulator"))
def _fim_mc_draws(key, x, w, thetas, y_noise, *, logpdf, num_sims, batch_size, simulator):
    """:func:`_fim_mc` for a stack of θ (K, 2), same simulation keys for every θ."""
    return jax.vmap(
        lambda th: _fim_mc(key, x, w, th, y_noise, logpdf=logpdf, num_sims=num_sims,
                           batch_size=batch_size, simulator=simulator)
    )(thetas)


fim_mc_draws_jit = jax.jit(_fim_mc_draws, static_argnames=("logpdf", "num_sims", "batch_size", "simulator"))


def check_mc_args(num_sims, batch_size, simulator):
    if not isinstance(num_sims, (int, np.integer)) or num_sims < 2:
        raise ValueError(f"num_sims must be an integer >= 2 (the MC error needs two), got {num_sims!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if simulator not in ("true", "gaussian"):
        raise ValueError(f"simulator must be 'true' or 'gaussian', got {simulator!r}")


def raise_if_nonfinite(arr, what):
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
    check_mc_args(num_sims, batch_size, simulator)
    if logpdf is None:
        logpdf = default_logpdf()
    if not callable(logpdf):
        raise ValueError(f"logpdf must be callable, got {logpdf!r}")
    x, w = jnp.asarray(x), jnp.asarray(w)
    theta = jnp.log(jnp.asarray([x_noise_lvl, w_noise_lvl], dtype=x.dtype))
    info, mcse = fim_mc_jit(
        key, x, w, theta, jnp.asarray(y_noise, dtype=x.dtype),
        logpdf=logpdf, num_sims=int(num_sims), batch_size=int(batch_size), simulator=simulator,
    )
    raise_if_nonfinite(info, "expected_fisher_information")
    return summarize_information(info, mcse, num_sims)
