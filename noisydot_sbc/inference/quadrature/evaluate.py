"""The model's log density at many points: the prior of z = (log|σ_x|, log|σ_w|) (folded where the
prior gives σ < 0 mass), the likelihood evaluators (:class:`Evaluator`: the model's own likelihood,
``loglik_grid`` or chunks of one compiled function; :class:`GaussianEvaluator`: the moment-matched
Gaussian approximation from sufficient statistics), the compiled-function cache, and the seed
(damped Newton with exact autodiff derivatives on the Gaussian-approximation posterior, and the
whitening of its Hessian)."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from .config import param_names


# ---------------------------------------------------------------------------------------------
# the model's log density on z = (log|σ_x|, log|σ_w|)
# ---------------------------------------------------------------------------------------------

def folded_log_prior(dist_, s):
    """log[p(s) + p(−s)] for s > 0: the prior of |σ| (the likelihood depends on |σ| only), and
    log p(−s) − that (the log probability that σ is negative given |σ| = s)."""
    def lp(v):
        inside = dist_.support(v)
        safe = jnp.where(inside, v, jnp.ones_like(v))
        return jnp.where(inside, dist_.log_prob(safe), -jnp.inf)

    pos, neg = lp(s), lp(-s)
    tot = jnp.logaddexp(pos, neg)
    return tot, neg - tot


def _log_prior_z(prior, z):
    """Log prior density of z = log|σ| (Jacobian included), z (..., 2)."""
    s = jnp.exp(z)
    lx, _ = folded_log_prior(prior.x_noise_lvl.distribution(), s[..., 0])
    lw, _ = folded_log_prior(prior.w_noise_lvl.distribution(), s[..., 1])
    return lx + lw + z[..., 0] + z[..., 1]


_JIT_CACHE: dict = {}
_SEEN_SHAPES: dict = {}
MAP_BATCH = 4  # points per vectorised step of the exact likelihood (see Evaluator)
SEED_CHUNK = 32  # replicates per call of the compiled seed Newton
SEED_STEP_TOL = 1e-10  # the seed Newton stops once a step moves log σ by at most this (a 60-step
# fixed loop cost 16-19 ms per call of 32 replicates, 4 ms per fit when a batch holds 4 replicates)
CHUNK = 64  # points per call of the compiled exact likelihood (see Evaluator)
CHEAP_CHUNK = 2048  # points per call for closed-form likelihoods (gaussian)


def cached(key, build):
    """The compiled function cached under ``key``, built by ``build()`` on first use."""
    fn = _JIT_CACHE.get(key)
    if fn is None:
        fn = _JIT_CACHE[key] = build()
    return fn


def likelihood_key(model):
    """Cache key of the model's likelihood: (name, readout noise) for the built-in models, else the callable's id."""
    if model.name in ("marginal", "gaussian"):
        return (model.name, float(model.y_noise))
    return ("loglik", id(model.loglik))


def point_loglik(model):
    """(y (N,), x (N, M), w (M,), sx, sw) -> (total loglik, its error estimate) for one point."""
    y_noise = float(model.y_noise)
    if model.name == "marginal":
        from ...likelihoods import noisydot_logpdf_with_error

        def f(y, x, w, sx, sw):
            r = noisydot_logpdf_with_error(y, x, w, sx, sw, y_noise)
            return jnp.sum(r.logp), jnp.sum(r.err)
    elif model.name == "gaussian":
        from ...likelihoods import gaussian_logpdf

        def f(y, x, w, sx, sw):
            return jnp.sum(gaussian_logpdf(y, x, w, sx, sw, y_noise)), jnp.zeros((), x.dtype)
    else:
        loglik = model.loglik

        def f(y, x, w, sx, sw):
            return jnp.sum(loglik(y, x, w, sx, sw)), jnp.zeros((), x.dtype)
    return f


class Evaluator:
    """Total log-likelihood at many parameter points per replicate, host level.

    The exact model uses :func:`noisydot_sbc.likelihoods.loglik_grid` where it exists (two-phase:
    fast pass for every point, robust tiers only for what it could not certify, gathered apart).
    Otherwise the (replicate, point) pairs are flattened and evaluated in chunks of CHUNK points
    by one compiled function (one shape, one compilation); for the exact likelihood the points
    of a chunk go through ``lax.map`` in batches of MAP_BATCH, because its robust tiers are
    while_loops and under ``vmap`` every round would be paid by the whole batch."""

    def __init__(self, model, data, use_grid=True, node_tolerance=0.0):
        self.model = model
        # loglik_grid's ``accept``: per observation, the node's tolerance shared over N observations
        self.accept = float(node_tolerance) / data["y"].shape[-1] if node_tolerance > 0 else None
        self.y, self.x, self.w = data["y"], data["x"], data["w"]
        # host copies for the grid path: loglik_grid works on NumPy arrays, and gathering the
        # replicates' rows from device arrays costs one dispatched gather per call
        self.host = {k: np.asarray(data[k]) for k in ("y", "x", "w")}
        self.compile_time = 0.0
        self.grid = None
        if model.name == "marginal" and use_grid:
            try:
                from ...likelihoods import loglik_grid
                self.grid = loglik_grid
            except ImportError:
                self.grid = None
        key = ("chunk",) + likelihood_key(model)
        point = point_loglik(model)
        # the replicates' rows are gathered inside the compiled function (one dispatch per chunk)
        if model.name == "marginal":
            def build():
                return jax.jit(lambda Y, X, W, r, sx, sw: jax.lax.map(
                    lambda a: point(*a), (Y[r], X[r], W[r], sx, sw), batch_size=MAP_BATCH))
        else:
            def build():
                return jax.jit(lambda Y, X, W, r, sx, sw: jax.vmap(point)(Y[r], X[r], W[r], sx, sw))
        self.fn = cached(key, build)
        self.first = key not in _SEEN_SHAPES
        _SEEN_SHAPES.setdefault(key, set())

    def __call__(self, rep_idx, z):
        """rep_idx (B,) replicate indices; z (B, K, 2) log noise levels -> (loglik (B, K), err (B, K))."""
        B, K = z.shape[:2]
        if B == 0 or K == 0:
            return np.zeros((B, K)), np.zeros((B, K))
        zc = np.clip(z, -700.0, 700.0)  # finite, positive noise levels (no mass out there anyway)
        sx, sw = np.exp(zc[..., 0]), np.exp(zc[..., 1])
        if self.grid is not None:
            h = self.host
            res = self.grid(h["y"][rep_idx], h["x"][rep_idx], h["w"][rep_idx], sx, sw, float(self.model.y_noise),
                            accept=self.accept)
            return np.asarray(res.loglik, np.float64), np.asarray(res.err, np.float64)
        rows = np.repeat(np.asarray(rep_idx), K)
        n = rows.size
        P = CHUNK if self.model.name == "marginal" else CHEAP_CHUNK
        total = -(-n // P) * P
        rows = np.concatenate([rows, np.full(total - n, rows[0])])
        fx = np.concatenate([sx.ravel(), np.full(total - n, sx.flat[0])])
        fw = np.concatenate([sw.ravel(), np.full(total - n, sw.flat[0])])
        dt = self.x.dtype
        ll = np.empty(total)
        er = np.empty(total)
        for c in range(0, total, P):
            t0 = time.perf_counter()
            a, e = self.fn(self.y, self.x, self.w, jnp.asarray(rows[c:c + P]), jnp.asarray(fx[c:c + P], dt),
                           jnp.asarray(fw[c:c + P], dt))
            ll[c:c + P], er[c:c + P] = np.asarray(a, np.float64), np.asarray(e, np.float64)
            if self.first:
                self.compile_time += time.perf_counter() - t0
                self.first = False
        return ll[:n].reshape(B, K), er[:n].reshape(B, K)


class GaussianEvaluator:
    """Total log-likelihood of the moment-matched Gaussian approximation at many points, from each
    replicate's sufficient statistics: with μ_n = Σ_i x_ni w_i, A_n = Σ_i w_i² x_ni² and
    B = Σ_i w_i², Var y_n = σ_w² A_n + σ_x² (1 + σ_w²) B + σ_y² (:func:`likelihoods.moments`), so a
    point costs O(N), not O(N M), and no (point, N, M) copy of x is formed (that copy, not the
    arithmetic, was the cost of evaluating the Gaussian model through :class:`Evaluator`).

    Evaluated in NumPy on the host, not by a compiled JAX function: the quadrature's two threads
    share one XLA CPU device, whose executions queue, so a small call of one thread waited behind
    the other thread's exact-likelihood block (measured, 8 replicates, N = 200, M = 8: 6.6 ms of
    thread time per fit in these calls with two threads, 2.3 ms with one)."""

    POINTS = 2048  # points per NumPy pass (temporaries of POINTS × N stay in cache)

    def __init__(self, data, y_noise):
        x, w, y = (np.asarray(data[k], np.float64) for k in ("x", "w", "y"))
        dt = np.dtype(data["x"].dtype)
        w2 = w * w
        self.r2 = ((y - np.einsum("snm,sm->sn", x, w)) ** 2).astype(dt)
        self.a = np.einsum("snm,sm->sn", x * x, w2).astype(dt)
        self.b = w2.sum(-1).astype(dt)
        self.dt = dt
        self.y2 = dt.type(float(y_noise) ** 2)

    def __call__(self, rep_idx, z):
        """rep_idx (B,), z (B, K, 2) -> (loglik (B, K), zeros (B, K)): the same call as :class:`Evaluator`."""
        B, K = z.shape[:2]
        if B == 0 or K == 0:
            return np.zeros((B, K)), np.zeros((B, K))
        zc = np.clip(z, -700.0, 700.0).reshape(-1, 2)
        rows = np.repeat(np.asarray(rep_idx), K)
        out = np.empty(rows.size)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            sx = np.exp(zc[:, 0]).astype(self.dt)
            sw = np.exp(zc[:, 1]).astype(self.dt)
            for c in range(0, rows.size, self.POINTS):
                r, x2, w2 = rows[c:c + self.POINTS], sx[c:c + self.POINTS] ** 2, sw[c:c + self.POINTS] ** 2
                var = w2[:, None] * self.a[r] + (x2 * (1 + w2) * self.b[r])[:, None] + self.y2
                out[c:c + self.POINTS] = -0.5 * np.sum(np.log(2 * np.pi * var) + self.r2[r] / var, axis=-1)
        return out.reshape(B, K), np.zeros((B, K))


# ---------------------------------------------------------------------------------------------
# 1. seed: Newton on the Gaussian-approximation posterior (exact autodiff derivatives, cheap)
# ---------------------------------------------------------------------------------------------

def prior_key(prior):
    """(families, parameters): the families are static (compiled in), loc/scale are arguments."""
    fams = (prior.x_noise_lvl.family, prior.w_noise_lvl.family)
    pp = np.array([prior.x_noise_lvl.loc, prior.x_noise_lvl.scale, prior.w_noise_lvl.loc, prior.w_noise_lvl.scale],
                  np.float64)
    return fams, pp


def _traced_prior(fams, pp):
    from ...priors import Prior, ScalePrior

    return Prior("traced", ScalePrior(fams[0], pp[0], pp[1]), ScalePrior(fams[1], pp[2], pp[3]))


def seed_fn(fams, total_loglik, steps):
    """Damped Newton (exact autodiff gradient and Hessian, eigenvalue-modified, backtracking) on
    ``total_loglik(y, x, w, sx, sw)`` + log prior, vectorised over replicates (prior parameters
    are arguments, so one compilation serves every prior of the same families)."""

    def lp(z, pp, y, x, w):
        return total_loglik(y, x, w, jnp.exp(z[0]), jnp.exp(z[1])) + _log_prior_z(_traced_prior(fams, pp), z)

    def newton(z0, pp, y, x, w):
        f = lambda z: lp(z, pp, y, x, w)

        def body(z):
            val, g = jax.value_and_grad(f)(z)
            h = jax.hessian(f)(z)
            lam, vec = jnp.linalg.eigh(-h)
            lam = jnp.maximum(jnp.abs(lam), 1e-6 * jnp.max(jnp.abs(lam)) + 1e-12)
            step = vec @ ((vec.T @ g) / lam)
            step = step * jnp.minimum(1.0, 1.0 / jnp.max(jnp.abs(step) + 1e-300))

            def shrink(c):
                t, _ = c
                return t * 0.5, f(z + 0.5 * t * step)

            t, v_new = jax.lax.while_loop(lambda c: (c[1] < val) & (c[0] > 1e-4), shrink, (1.0, f(z + step)))
            ok = jnp.isfinite(v_new) & (v_new >= val)
            return jnp.where(ok, z + t * step, z)

        def step_once(c):
            z, i, _ = c
            z_new = body(z)
            return z_new, i + 1, jnp.max(jnp.abs(z_new - z))

        # until a step moves z by at most SEED_STEP_TOL (Newton converges quadratically: a handful of
        # steps from the prior median), ``steps`` at most; under vmap, until every replicate has stopped
        z, _, _ = jax.lax.while_loop(lambda c: (c[1] < steps) & (c[2] > SEED_STEP_TOL), step_once,
                                     (z0, 0, jnp.asarray(jnp.inf, z0.dtype)))
        return z, -jax.hessian(f)(z), f(z)

    return jax.jit(jax.vmap(newton, (0, None, 0, 0, 0)))


def prior_median_z(prior):
    """log of the prior median of |σ| per parameter (from 4000 fixed draws)."""
    d = prior.sample(jax.random.PRNGKey(0), (4000,))
    return np.log(np.array([np.median(np.abs(np.asarray(d[p]))) for p in param_names()]))


def whitening(neg_h):
    """C with C Cᵀ = (−H)⁻¹ (eigenvalues floored), batched (B, 2, 2)."""
    neg_h = 0.5 * (neg_h + np.swapaxes(neg_h, -1, -2))
    lam, vec = np.linalg.eigh(neg_h)
    top = np.max(np.abs(lam), axis=-1, keepdims=True)
    lam = np.maximum(np.abs(lam), 1e-8 * top + 1e-12)
    cov = np.einsum("bij,bj,bkj->bik", vec, 1.0 / lam, vec)
    return np.linalg.cholesky(cov)


# ---------------------------------------------------------------------------------------------
# the log prior on z at many points
# ---------------------------------------------------------------------------------------------

def prior_lp_fn(prior):
    """``prior_lp(z)``: the log prior density of z = log|σ| (..., 2) as a NumPy array, folded and with
    its Jacobian as :func:`_log_prior_z` (which the seed differentiates), from the priors' host
    twins (:meth:`~noisydot_sbc.priors.ScalePrior.log_density`): as a compiled JAX call it queued
    behind the other quadrature thread's exact-likelihood blocks on the shared XLA CPU device."""
    parts = (prior.x_noise_lvl, prior.w_noise_lvl)

    def prior_lp(z):
        z = np.asarray(z, np.float64)
        out = z[..., 0] + z[..., 1]
        with np.errstate(over="ignore"):
            for k, part in enumerate(parts):
                s = np.exp(z[..., k])
                out = out + np.logaddexp(part.log_density(s), part.log_density(-s))
        return out

    return prior_lp
