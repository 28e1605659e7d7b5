"""The summed exact log-likelihood at many parameter points per replicate: two-phase evaluation.

One job: :func:`loglik_grid` (a quadrature over (σ_x, σ_w) needs the exact likelihood of S
replicates at K points each), run at host level: the fast pass of :mod:`.exact` everywhere in
fixed blocks, then only the uncertified (replicate, point, observation) triples through the same
robust tiers in fixed-size buckets; per observation the same result as
:func:`~.exact.noisydot_logpdf_with_error`.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import as_finite_array, check_positive
from .exact import fast_stage, quadrature_options, tier_names, tier_pass
from .inversion import tolerances


class GridResult(NamedTuple):
    """Summed log-likelihood of each replicate at each of its parameter points (host arrays)."""

    loglik: np.ndarray     # (S, K) Σ_n log p(y_sn | x_sn, w_s, σ_x,sk, σ_w,sk, σ_y)
    err: np.ndarray        # (S, K) Σ_n of the per-observation error estimates (nats)
    n_robust: np.ndarray   # (S, K) observations the fast pass could not certify (evaluated by the tiers)
    grad: np.ndarray | None = None   # (S, K, 2) d loglik / d(σ_x, σ_w) when asked for


@partial(jax.jit, static_argnames=("opts", "with_grad"))
def _grid_fast(y, x, w, sx, sw, sy, opts, with_grad):
    """Phase 1 on a block of P points: y (P, N), x (P, N, M), w (P, M), σ (P,). Per (point, observation)
    the fast-pass result, its certification and what phase 2 starts from."""

    def one(y1, x1, w1, sx1, sw1):
        st = fast_stage(sx1, sw1, sy, y1, x1, w1, opts, (0, 1) if with_grad else ())
        jac = st.jac if with_grad else jnp.zeros(y1.shape + (0,), y1.dtype)
        return st.logp, st.err, st.ok, st.extra, st.delta, jac

    return jax.vmap(one)(y, x, w, sx, sw)


@partial(jax.jit, static_argnames=("tier", "opts", "with_grad"))
def _grid_tier(y, delta, x, w, sx, sw, sy, tier, opts, with_grad):
    """Phase 2: one robust tier on a bucket of B independent (replicate, point, observation) triples:
    y, δ, σ_x, σ_w (B,), x and w (B, M)."""

    def one(y1, d1, x1, w1, sx1, sw1):
        def f(th):
            res = tier_pass(tier, opts, th[0], th[1], sy, y1[None], d1[None], x1[None], w1)
            return res.logp[0], res
        if with_grad:
            jac, res = jax.jacfwd(f, has_aux=True)((sx1, sw1))
            jac = jnp.stack(jac)
        else:
            res = f((sx1, sw1))[1]
            jac = jnp.zeros((0,), y1.dtype)
        return res.logp[0], res.err_disc[0], res.err_tail[0], jac

    return jax.vmap(one)(y, delta, x, w, sx, sw)


def _pad_to(a, size):
    """a (n, ...) padded to (size, ...) with copies of its first row (valid inputs, results dropped)."""
    n = a.shape[0]
    if n == size:
        return a
    return np.concatenate([a, np.broadcast_to(a[:1], (size - n,) + a.shape[1:])], axis=0)


SMALL_BLOCK = 8  # points per phase-1 call for what is left after the full blocks


def _blocks(n_pts, full):
    """Phase-1 blocks of ``n_pts`` points as (slice, padded size): blocks of ``full`` points, then
    the rest in blocks of SMALL_BLOCK (each padded to its size). Two block sizes, so two compiled
    programs per (N, M) whatever the number of points: a block sized to each call's point count
    compiled anew for every count (14 programs at ~1.4 s each in a 32-replicate quadrature)."""
    small = min(SMALL_BLOCK, full)
    start = 0
    while n_pts - start >= full:
        yield slice(start, start + full), full
        start += full
    while start < n_pts:
        yield slice(start, min(start + small, n_pts)), small
        start += small


def loglik_grid(y, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0, *, with_grad=False, block_obs=8192,
                bucket=128, accept=None, **options) -> GridResult:
    """Summed exact log-likelihood of S replicates at K parameter points each, two-phase (host level).

    y (S, N), x (S, N, M), w (S, M), x_noise_lvl and w_noise_lvl (S, K), y_noise a scalar. Returns a
    :class:`GridResult` of NumPy arrays (S, K) (``grad`` (S, K, 2) w.r.t. (σ_x, σ_w) if ``with_grad``).

    Phase 1: the vectorised fast pass for every (replicate, point, observation), in blocks of about
    ``block_obs`` observations, the rest in blocks of SMALL_BLOCK points (each padded to its block
    size, so two compiled functions serve every call with the same N and M). Phase 2: only the
    triples the fast pass could not certify are gathered on the host and evaluated, tier after
    tier (those of :func:`noisydot_logpdf_with_error`, in the same order, each tier only on what
    the previous one did not certify), in buckets of
    ``bucket`` triples padded to that size, so each tier compiles once. Under ``vmap`` the in-graph
    version pays every ``while_loop`` round of the worst observation for the whole batch; here the
    robust work is proportional to the number of uncertified triples. Per observation the result
    is the one :func:`noisydot_logpdf_with_error` returns (whichever tier has the smaller error
    estimate; same passes, same nodes), summed over observations. Value only by default; with
    ``with_grad`` also the derivative (analytic in phase 1, forward-mode in the tiers).
    ``options``: the quadrature options of :func:`noisydot_logpdf_with_error`.

    ``accept``: None (default) certifies a fast-pass value as the likelihood does everywhere
    (relative errors below 1e-9 and 1e-10 in float64). A number (nats per observation) also
    accepts a fast-pass value whose error estimate is at most ``accept``; only the rest goes
    through the robust tiers. For a caller that needs far less accuracy than 1e-9 per observation:
    the quadrature's nodes need ~1e-4 nats in all, and at N = 200, M = 8 the tiers spent about
    half its likelihood time on observations the fast pass had to within 1e-6. Likewise an
    observation leaves the chain of tiers as soon as its best value has an estimate within
    ``accept`` (at N = 200, M = 8 under the strong prior, 58.5 observations per quadrature fit went
    on from the medium tier to the bent contour, 0.24 ms each, most for a tolerance they already
    met; 1.7 do now). The returned ``err`` is the estimate of the value kept, so a caller still
    sees what it accepted.
    """
    as_finite_array("y", y, ndim=2)
    as_finite_array("x", x, ndim=3)
    as_finite_array("w", w, ndim=2)
    x = np.asarray(x)
    dtype = np.dtype(jnp.result_type(x.dtype, float))
    x = x.astype(dtype)
    y = np.asarray(y, dtype)
    w = np.asarray(w, dtype)
    s_rep, n, m = x.shape
    if y.shape != (s_rep, n):
        raise ValueError(f"y must have shape (S, N) = {(s_rep, n)} to match x {x.shape}, got {y.shape}")
    if w.shape != (s_rep, m):
        raise ValueError(f"w must have shape (S, M) = {(s_rep, m)} to match x {x.shape}, got {w.shape}")
    if np.any(np.all(w == 0, axis=-1)):
        raise ValueError("w is all zero in some replicate: the device output carries no information about the noise")
    sx = np.asarray(x_noise_lvl, dtype)
    sw = np.asarray(w_noise_lvl, dtype)
    for name, a in (("x_noise_lvl", sx), ("w_noise_lvl", sw)):
        if a.ndim != 2 or a.shape[0] != s_rep:
            raise ValueError(f"{name} must have shape (S, K) with S = {s_rep}, got {a.shape}")
        check_positive(name, a)
    if sx.shape != sw.shape:
        raise ValueError(f"x_noise_lvl {sx.shape} and w_noise_lvl {sw.shape} must have the same shape (S, K)")
    if np.ndim(y_noise) != 0:
        raise ValueError(f"y_noise must be a scalar, got shape {np.shape(y_noise)}")
    check_positive("y_noise", y_noise, allow_zero=True)
    if int(bucket) < 1 or int(block_obs) < 1:
        raise ValueError("bucket and block_obs must be >= 1")
    if accept is not None and not (np.ndim(accept) == 0 and float(accept) >= 0):
        raise ValueError(f"accept must be None or a number >= 0 (nats per observation), got {accept!r}")
    opts = quadrature_options(options)
    k = sx.shape[1]
    eps = float(np.finfo(dtype).eps)
    tol = tolerances(dtype)
    sy = jnp.asarray(y_noise, dtype)
    n_pts = s_rep * k
    rep = np.repeat(np.arange(s_rep), k)
    sx_p, sw_p = sx.reshape(-1), sw.reshape(-1)

    # ---- phase 1: the fast pass everywhere ----------------------------------------------------
    pending = []  # every block is dispatched before any result is read: the host prepares the next
    for sl, size in _blocks(n_pts, max(1, int(block_obs) // n)):  # block while XLA computes this one
        r = rep[sl]
        args = [_pad_to(a, size) for a in (y[r], x[r], w[r], sx_p[sl], sw_p[sl])]
        pending.append((sl.stop - sl.start, _grid_fast(*args, sy, opts=opts, with_grad=bool(with_grad))))
    outs = [[np.asarray(a)[:used] for a in res] for used, res in pending]
    logp, err, ok, extra, delta, jac = (np.concatenate(c, axis=0) for c in zip(*outs))
    logp, err, jac = logp.copy(), err.copy(), jac.copy()

    # ---- phase 2: the uncertified triples, tier by tier, in fixed-size buckets -----------------
    if accept is not None:
        ok = ok | (err <= float(accept))  # err is finite there: NaN and inf compare False
    todo_p, todo_n = np.nonzero(~ok)
    n_robust = np.bincount(todo_p, minlength=n_pts)
    names = tier_names(m)
    for i, tier in enumerate(names):
        if todo_p.size == 0:
            break
        nxt = []
        for start in range(0, todo_p.size, int(bucket)):
            p_i, n_i = todo_p[start:start + int(bucket)], todo_n[start:start + int(bucket)]
            r = rep[p_i]
            args = [_pad_to(a, int(bucket)) for a in (y[r, n_i], delta[p_i, n_i], x[r, n_i], w[r], sx_p[p_i],
                                                     sw_p[p_i])]
            lp_r, ed, et, jac_r = (np.asarray(a)[: p_i.size] for a in _grid_tier(
                *args, sy, tier=tier, opts=opts, with_grad=bool(with_grad)))
            e_r = np.maximum(np.maximum(ed, et), eps)
            better = e_r <= err[p_i, n_i]
            logp[p_i[better], n_i[better]] = lp_r[better]
            err[p_i[better], n_i[better]] = e_r[better]
            if with_grad:
                jac[p_i[better], n_i[better]] = jac_r[better]
            if i < len(names) - 1:
                keep = ~((ed < tol["disc"]) & (et < tol["tail"]))
                if accept is not None:   # the best value so far is within the caller's tolerance
                    keep &= ~(err[p_i, n_i] <= float(accept))
                nxt.append((p_i[keep], n_i[keep]))
        if nxt:
            todo_p = np.concatenate([a for a, _ in nxt])
            todo_n = np.concatenate([b for _, b in nxt])
        else:
            todo_p = todo_n = np.zeros(0, int)

    # ---- per-observation finish (as in noisydot_logpdf_with_error), sum over observations ------
    err = err + extra
    bad = ~np.isfinite(logp)
    if with_grad:
        bad |= ~np.all(np.isfinite(jac), axis=-1)
    err = np.where(bad, np.inf, err)
    shape = (s_rep, k)
    grad = jac.sum(axis=1).reshape(shape + (2,)) if with_grad else None
    return GridResult(logp.sum(axis=1).reshape(shape), err.sum(axis=1).reshape(shape), n_robust.reshape(shape), grad)
