"""The exact marginal density of each observation, with its error estimate (see docs/likelihood.md).

One job: :func:`noisydot_logpdf_with_error` / :func:`noisydot_logpdf`, the exact log p(y_n) by
tiered quadrature: the fast pass of :mod:`.inversion` for every observation (:func:`fast_stage`),
then, for the observations it cannot certify, the robust tiers in order (:func:`tier_names`,
:func:`tier_pass`: the passes of :mod:`.inversion` and :mod:`.weight_noise`), keeping per
observation the result with the smaller error estimate; the custom JVP that makes it
differentiable w.r.t. the noise levels; the static quadrature options (:class:`QuadratureOptions`,
:func:`quadrature_options`).
"""
from __future__ import annotations

import inspect
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from .._validation import check_design, check_positive
from .cumulants import cgf_derivs, saddlepoint_from_terms, term_params
from .inversion import InversionResult, distrust, error_estimate, fast_pass, fourier_pass, tilted_pass, tolerances
from .weight_noise import direct_m1_pass, polar_m2_pass


class LogpdfResult(NamedTuple):
    """Exact log density per observation with the quadrature's own error estimate (nats)."""

    logp: jax.Array
    err: jax.Array         # estimated |log p error| per observation (an indicator, not a proof)
    fallback: jax.Array    # bool: the observation was evaluated by the robust scheme


class QuadratureOptions(NamedTuple):
    """Static quadrature options (hashable: a nondiff argument of the custom JVP)."""

    h: float
    n_nodes: int
    n_iter: int
    group: int
    fallback_nodes: int
    fallback_batch: int
    polar_nodes: int
    tilted_h: float
    tilted_range: float


class FastStage(NamedTuple):
    """Phase 1 (the fast pass) for every observation, plus what the robust tiers start from."""

    delta: jax.Array       # (N,) y - E[y]
    logp: jax.Array        # (N,) fast-pass log density
    err: jax.Array         # (N,) its error estimate
    ok: jax.Array          # (N,) bool: certified by the fast pass
    extra: jax.Array       # (N,) error added to whatever tier wins (data rounding; ∞ where singular)
    jac: jax.Array | None  # (N, P) analytic fast-pass derivative w.r.t. the requested noise levels


def fast_stage(sx, sw, sy, y, x, w, opts: QuadratureOptions, jac_wrt: tuple = ()) -> FastStage:
    """The fast pass over all N observations of one design, its certification and error terms."""
    dtype = x.dtype
    n, m = x.shape
    eps = float(jnp.finfo(dtype).eps)
    tol = tolerances(dtype)
    g = min(opts.group, m)
    c2, mu, v = term_params(x, w, sx, sw)
    delta = y - jnp.sum(mu, axis=-1)       # y - E[y]: the centred form never forms s·E[y] (see cumulants._centred_parts)
    s_hat, k2 = saddlepoint_from_terms(delta, c2, mu, v, sy * sy, opts.n_iter, return_k2=True)
    sd = jnp.sqrt(k2)
    branch_ok = _branch_ok(c2, s_hat, g)
    k0, _, _ = cgf_derivs(s_hat, c2, mu, v, sy * sy)
    if jac_wrt:
        # analytic derivatives of c², v, σ_y² w.r.t. (σ_x, σ_w, σ_y), rows in the order of jac_wrt
        w2 = w * w
        dc2_all = (2.0 * sx * sw * sw * w2, 2.0 * sx * sx * sw * w2, jnp.zeros_like(w2))
        dv_all = (jnp.broadcast_to(2.0 * sx * w2, mu.shape), 2.0 * sw * w2 * x * x, jnp.zeros_like(mu))
        dy2_all = (jnp.zeros((), dtype), jnp.zeros((), dtype), 2.0 * sy)
        dparams = tuple(jnp.stack([d[i] for i in jac_wrt]) for d in (dc2_all, dv_all, dy2_all))
        main, jac = fast_pass(delta, s_hat, k0, sd, c2, mu, v, sy * sy, opts.h, opts.n_nodes, g, dparams)
    else:
        main, jac = fast_pass(delta, s_hat, k0, sd, c2, mu, v, sy * sy, opts.h, opts.n_nodes, g), None
    main = distrust(main, branch_ok & _line_ok(delta, s_hat, c2, mu, v, sy * sy))
    ok = (main.err_disc < tol["disc"]) & (main.err_tail < tol["tail"])
    # the data's own rounding: δ = y - E[y] is known to about ρ = eps (|y| + Σ_i |x_i w_i|), and
    # d log p / dy = -ŝ, so log p is uncertain by |ŝ| ρ + ρ² / (2 K''): negligible unless the
    # density is far narrower than the rounding of its location (noise levels ~1e-15 of |y|)
    rho = eps * (jnp.abs(y) + jnp.sum(jnp.abs(mu), axis=-1))
    extra = lax.stop_gradient(jnp.abs(s_hat) * rho + 0.5 * rho * rho / k2)
    if m == 1:   # y = 0 exactly without readout noise: the true density is infinite (log singularity)
        extra = jnp.where((y == 0) & (sy == 0), jnp.inf, extra)
    return FastStage(delta, main.logp, error_estimate(main, eps), ok, extra, jac)


_MAX_LINE_RESIDUAL = 1.0   # |K'(ŝ) - y| / √K''(ŝ) above which a vertical-line pass is not trusted


def _line_ok(delta, s_hat, c2, mu, v, y2):
    """The inversion line passes (near) the saddlepoint: |K'(ŝ) - y| / √K''(ŝ) < 1. Off it the
    integrand oscillates at that standardised frequency on top of the peak exp(K(ŝ) - ŝ y), which
    then exceeds the density by exp(residual²/2) or (near the edge of the strip, where a few Newton
    steps can stall) by hundreds of nats; the nodes alias the oscillation and both step sizes can
    agree on a wrong value (seen: log p = 2304 certified at 8e-16 where the density is e^-17)."""
    _, k1, k2 = cgf_derivs(s_hat, c2, mu, v, y2, with_value=False)
    return jnp.abs(k1 - delta) < _MAX_LINE_RESIDUAL * jnp.sqrt(k2)


def _branch_ok(c2, s_hat, g):
    """The fast pass's sufficient condition Σ_group c_i |ŝ| < 1.9 for its grouped logarithms."""
    m = c2.shape[-1]
    ng = -(-m // g)
    cabs = jnp.pad(jnp.sqrt(c2), (0, ng * g - m)).reshape(ng, g).sum(-1)
    return jnp.max(cabs) * jnp.abs(s_hat) < 1.9


def _finish(logp, err, extra, jac=None):
    """Final error estimate: the winning tier's plus the data-rounding term; ∞ where anything is not
    finite (never a silent NaN: such a value is always flagged)."""
    err = err + extra
    bad = ~jnp.isfinite(logp)
    if jac is not None:
        bad = bad | ~jnp.all(jnp.isfinite(jac), axis=-1)
    return jnp.where(bad, jnp.inf, err)


TIER_NEWTON_STEPS = 40   # the robust tiers' own saddlepoint refinement (safeguarded Newton, rolled loop)


def tier_names(m):
    """The robust tiers in the order they are tried, for M terms (the last one is not checked)."""
    if m == 1:
        return ("direct",)
    return ("medium", "tilted", "polar", "vertical") if m == 2 else ("medium", "tilted", "vertical")


def tier_pass(tier, opts: QuadratureOptions, sx, sw, sy, y, delta, x, w) -> InversionResult:
    """One robust tier on R observations y, δ = y - E[y] (R,), x (R, M) of one weight vector w (M,).
    Differentiable in (σ_x, σ_w, σ_y). The inversion-line tiers solve for their own saddlepoint.

    medium:   the fast pass again with half the step and four times the range (8x the nodes);
    tilted:   inversion along the bent contour with a sinh map (the t^-M tail, M >= 2);
    polar:    M = 2, quadrature over the weight noise in polar coordinates;
    vertical: per-term complex inversion with step h/2 and a 16x range (the last tier, M >= 2);
    direct:   M = 1, direct quadrature over log|w̃|.
    """
    m = x.shape[-1]
    g = min(opts.group, m)
    y2 = sy * sy
    if tier == "direct":
        return direct_m1_pass(y, x[:, 0], w[0], sx, sw, y2, opts.fallback_nodes)
    if tier == "polar":
        return polar_m2_pass(y, x, w, sx, sw, y2, opts.polar_nodes)
    if tier not in ("medium", "tilted", "vertical"):
        raise ValueError(f"unknown tier {tier!r}")
    c2, mu, v = term_params(x, w, sx, sw)
    # the line must pass through the saddlepoint itself (the bend assumes it, and a vertical line
    # off it aliases an oscillation, see _line_ok): near the edge of the strip the fast path's few
    # Newton steps can stall, so refine (from constant inputs, so ŝ and K''(ŝ) are constants under
    # differentiation), and trust the pass only if the refined line is on the saddlepoint
    consts = lax.stop_gradient((delta, c2, mu, v, y2))
    s_hat, k2s = saddlepoint_from_terms(*consts, TIER_NEWTON_STEPS, return_k2=True, rolled=True)
    s_hat = lax.stop_gradient(s_hat)
    sd = lax.stop_gradient(jnp.sqrt(k2s))
    on_line = _line_ok(consts[0], s_hat, *consts[1:])
    k0, _, _ = cgf_derivs(s_hat, c2, mu, v, y2)
    if tier == "tilted":
        res = tilted_pass(y, delta, s_hat, k0, sd, c2, mu, v, y2, opts.tilted_h, opts.tilted_range)
    elif tier == "medium":
        res = fast_pass(delta, s_hat, k0, sd, c2, mu, v, y2, 0.5 * opts.h, 8 * (opts.n_nodes - 1) + 1, g)
        on_line = on_line & _branch_ok(lax.stop_gradient(c2), s_hat, g)
    else:
        res = fourier_pass(delta, s_hat, k0, sd * sd, c2, mu, v, y2, 0.5 * opts.h, 32 * (opts.n_nodes - 1) + 1)
    return distrust(res, on_line)


def _certified(res: InversionResult, tol):
    return (res.err_disc < tol["disc"]) & (res.err_tail < tol["tail"])


def _exact_impl(sx, sw, sy, y, x, w, opts: QuadratureOptions, jac_wrt: tuple):
    """Log density, error estimate, fallback flag and d log p / d(noise levels in ``jac_wrt``).

    The fast pass covers every observation; observations that fail its checks are recomputed,
    ``fallback_batch`` at a time in ``lax.while_loop``s, by the tiers of :func:`tier_pass`
    (M >= 2: medium, bent contour, for M = 2 polar, then the long vertical line; M = 1: direct
    quadrature). Each loop runs zero times when nothing needs it, and stays a loop under ``vmap``
    (a ``lax.cond`` would become a select that always pays for the robust schemes). Derivatives:
    analytic inside the fast pass, forward-mode autodiff at fixed nodes in the tiers, so no loop
    is ever differentiated. (:func:`loglik_grid` runs the same tiers host-side on gathered
    observations instead of in loops.)
    """
    dtype = x.dtype
    n, m = x.shape
    eps = float(jnp.finfo(dtype).eps)
    tol = tolerances(dtype)
    st = fast_stage(sx, sw, sy, y, x, w, opts, jac_wrt)
    theta = (sx, sw, sy)
    r = min(opts.fallback_batch, n)

    def with_jac(fn, theta):
        """fn(theta) -> (logp, aux); returns (aux, jacobian (N, len(jac_wrt)) or None)."""
        if not jac_wrt:
            return fn(theta)[1], None
        free = lambda sub: fn(tuple(sub[jac_wrt.index(i)] if i in jac_wrt else theta[i] for i in range(3)))
        jac, aux = jax.jacfwd(free, has_aux=True)(tuple(theta[i] for i in jac_wrt))
        return aux, jnp.stack(jac, axis=-1)

    def tier(name, checked, state):
        """Recompute the observations flagged in state[0], r at a time; those that the tier does not
        certify (when ``checked``) are flagged in state[5] for the next tier."""

        def fn(th, idx):
            res = tier_pass(name, opts, *th, y[idx], st.delta[idx], x[idx], w)
            return res.logp, res

        def body(stt):
            todo, logp, err, fb, jac, nxt = stt
            idx = jnp.argsort(~todo, stable=True)[:r]          # up to r observations still to do
            res, jac_r = with_jac(lambda th: fn(th, idx), theta)
            e_r = error_estimate(res, eps)
            sel = todo[idx]
            better = sel & (e_r <= err[idx])
            logp = logp.at[idx].set(jnp.where(better, res.logp, logp[idx]))
            err = err.at[idx].set(jnp.where(better, e_r, err[idx]))
            fb = fb.at[idx].set(fb[idx] | better)
            if jac is not None:
                jac = jac.at[idx].set(jnp.where(better[:, None], jac_r, jac[idx]))
            if checked:
                nxt = nxt.at[idx].set(nxt[idx] | (sel & ~_certified(res, tol)))
            return todo.at[idx].set(False), logp, err, fb, jac, nxt

        return lax.while_loop(lambda stt: jnp.any(stt[0]), body, state)

    nobody = jnp.zeros(n, bool)
    names = tier_names(m)
    state = (~st.ok, st.logp, st.err, nobody, st.jac, nobody)
    for i, name in enumerate(names):
        if i:
            state = (state[5],) + tuple(state[1:5]) + (nobody,)
        state = tier(name, i < len(names) - 1, state)
    _, logp, err, fb, jac, _ = state
    return logp, _finish(logp, err, st.extra, jac), fb, jac


@partial(jax.custom_jvp, nondiff_argnums=(6,))
def _exact(sx, sw, sy, y, x, w, opts):
    logp, err, fb, _ = _exact_impl(sx, sw, sy, y, x, w, opts, ())
    return logp, err, fb.astype(logp.dtype)


def _exact_jvp(opts, primals, tangents):
    sx, sw, sy, y, x, w = primals
    for name, t in zip(("y", "x", "w"), tangents[3:]):
        if not isinstance(t, SymbolicZero):
            raise NotImplementedError(
                f"the exact NoisyDot log-density is differentiable w.r.t. the noise levels only, not {name}"
            )
    jac_wrt = tuple(i for i in range(3) if not isinstance(tangents[i], SymbolicZero))
    logp, err, fb, jac = _exact_impl(sx, sw, sy, y, x, w, opts, jac_wrt)
    t_out = jnp.zeros_like(logp)
    for col, i in enumerate(jac_wrt):
        t_out = t_out + jac[:, col] * tangents[i]
    zero = jnp.zeros_like(logp)
    return (logp, err, fb.astype(logp.dtype)), (t_out, zero, zero)


_exact.defjvp(_exact_jvp, symbolic_zeros=True)

# one compiled function per (shapes, dtype, options): eager calls reuse it instead of re-tracing and
# re-compiling the while loops on every call (inside an outer jit it is simply inlined)
_exact_jit = jax.jit(_exact, static_argnums=(6,))


def noisydot_logpdf_with_error(
    y, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0, *, h=0.6, n_nodes=13, n_iter=4, group=8,
    fallback_nodes=512, fallback_batch=16, polar_nodes=128, tilted_h=0.05, tilted_range=28.0,
):
    """Exact log p(y_n | x_n, w, σ_x, σ_w, σ_y) per observation, with an error estimate.

    Fast path: trapezoid rule on the saddlepoint-shifted inversion line (``n_nodes`` nodes of step
    ``h`` in standardised units, nodes k h for k < n_nodes). Observations whose step-halving,
    truncation or branch check fails are recomputed, ``fallback_batch`` at a time inside
    ``lax.while_loop``s (zero iterations, so zero cost, when all pass), by the robust tiers:
    M = 1: direct quadrature over log|w̃| (``fallback_nodes`` nodes per sign of w̃);
    M ≥ 2: the fast pass with step h/2 and 4x the range; then inversion along a contour bent into
    the half-plane where exp(-s y) decays, sinh-mapped nodes of step ``tilted_h`` up to
    u = ``tilted_range`` (the t^-M tail of the heavy corner, M ≥ 2); then, for M = 2, quadrature
    over the weight noise in polar coordinates (``polar_nodes``² nodes); then, for what is still
    not certified, complex inversion with step h/2 and a 16x longer range.
    The result per observation is whichever has the smaller error estimate.
    Differentiable (custom JVP, so also reverse mode) w.r.t. the three noise levels; the
    derivative is that of the quadrature at its fixed nodes. Not differentiable w.r.t. y, x, w.
    Unchecked and traceable: validate inputs with :func:`noisydot_logpdf` or the distribution.
    """
    x = jnp.asarray(x)
    dtype = jnp.result_type(x.dtype, float)
    x = x.astype(dtype)
    w = jnp.asarray(w, dtype)
    y = jnp.asarray(y, dtype)
    sx = jnp.asarray(x_noise_lvl, dtype)
    sw = jnp.asarray(w_noise_lvl, dtype)
    sy = jnp.asarray(y_noise, dtype)
    opts = quadrature_options(dict(h=h, n_nodes=n_nodes, n_iter=n_iter, group=group, fallback_nodes=fallback_nodes,
                           fallback_batch=fallback_batch, polar_nodes=polar_nodes, tilted_h=tilted_h,
                           tilted_range=tilted_range))
    logp, err, fb = _exact_jit(sx, sw, sy, y, x, w, opts)
    return LogpdfResult(logp, err, fb > 0.5)


def noisydot_logpdf(y, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0, **kwargs):
    """Exact marginal log-density of each observation y_n (shape (N,)) of the noisy dot product.

    Accuracy (float64): |error| < 1e-8 nats over the strong-prior region; see docs/likelihood.md
    for the measured table and the heavy-noise corners. Checks concrete inputs (ValueError
    naming the argument); traceable under jit/vmap/grad.
    """
    check_design(x, w, y)
    check_positive("x_noise_lvl", x_noise_lvl)
    check_positive("w_noise_lvl", w_noise_lvl)
    check_positive("y_noise", y_noise, allow_zero=True)
    return noisydot_logpdf_with_error(y, x, w, x_noise_lvl, w_noise_lvl, y_noise, **kwargs).logp




def quadrature_options(kwargs) -> QuadratureOptions:
    """Quadrature options (the defaults are those of :func:`noisydot_logpdf_with_error`)."""
    d = {k: p.default for k, p in inspect.signature(noisydot_logpdf_with_error).parameters.items()
         if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = set(kwargs) - set(d)
    if unknown:
        raise ValueError(f"unknown quadrature option(s) {sorted(unknown)}; known: {sorted(d)}")
    d.update(kwargs)
    return QuadratureOptions(float(d["h"]), int(d["n_nodes"]), int(d["n_iter"]), int(d["group"]), int(d["fallback_nodes"]),
                 int(d["fallback_batch"]), int(d["polar_nodes"]), float(d["tilted_h"]), float(d["tilted_range"]))
