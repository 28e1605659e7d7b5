"""Exact two-parameter posteriors by deterministic quadrature: a second inference method beside NUTS.

For every model whose only parameters are the two noise levels (``marginal``: exact; ``gaussian``:
the moment-matched approximation) the posterior of z = (log σ_x, log σ_w) is a smooth 2-D density
that can be integrated instead of sampled. Per replicate (all replicates of a batch at once):

1. **Seed**: damped Newton with exact autodiff gradient and Hessian on the log posterior of the
   *Gaussian approximation* (cheap: ~1 µs per point; for a model with a closed-form likelihood,
   such as ``gaussian``, on the model itself), from the prior median. Its mode m₀ and
   Hessian H₀ fix whitened coordinates z = m + C u, C Cᵀ = (−H)⁻¹ (Cholesky).
2. **Polish on the model's own likelihood**: the 3×3 stencil u ∈ {−dz, 0, dz}² gives the gradient
   and Hessian of the model's log posterior by central differences; a Newton step moves m and
   re-whitens C until the step is < dz/3 and the stencil Hessian agrees with the whitening
   (eigenvalues of −H_u in [0.5, 2]); the nine values are nodes of the lattice below, so they are
   reused. (Exact-likelihood *derivatives* are not used here: under ``vmap`` the exact gradient
   costs ~2.7 values and the Hessian ~7.6, and their compilation 15 s / 29 s, measured at
   N = 200, M = 8; values through the two-phase grid evaluation are cheaper.)
3. **Half-axis extents**: the log density is probed along the four whitened half-axes at
   t = r, 2r, 4r, ... (r = √(2D)); a half-axis reaching further than a Gaussian gets a smooth
   softplus stretch of the lattice (:func:`warp`; R-INLA's separate half-axis scalings, smooth).
   **Walk outwards** (after R-INLA's hyperparameter integration: a lattice of step dz in these
   coordinates): first every node of the disk |v|²/2 < D (``log_density_drop``), then,
   round by round, every not yet evaluated 8-neighbour of a node whose log density is within D of
   the highest value found. The walk follows ridges, bananas and prior-dominated directions
   wherever they go, and stops at the first ring below max − D; nothing outside is evaluated.
4. **Integrate**: the log marginal likelihood by the trapezoid rule on the lattice (spectrally
   accurate for a smooth integrand); for quantiles, moments and draws the residual
   r(u) = log p(u) − log p(0) + |u|²/2 is interpolated by a bicubic spline and evaluated on a
   fine grid of ``fine_grid``² cells aligned with the (log σ_x, log σ_w) axes, so the marginal of
   each parameter is a sum along one axis. Draws are exact inverse-CDF draws from that
   piecewise-constant density (independent; no thinning).
5. **Error estimate and refinement**: the same summaries computed from the sublattice of step
   2·dz (every other node) and the full lattice; the error estimate is the largest change of
   log mass (nats), means, sds and 5/50/95 % quantiles of both parameters (in posterior sds, on
   the log and the natural scale) over 15 (Richardson, fourth order), or the held-out error of the
   2h spline at the nodes it did not see over 4 if larger, plus 10 × the mass on the walk's outer
   ring (truncation) and the likelihood's own error estimate. Above ``tolerance`` the lattice step is halved (old nodes are
   reused) up to ``max_refinements`` times within ``max_nodes`` nodes; a replicate that still
   misses the tolerance is reported uncertified (``certified`` False, ``error_estimate`` the
   estimate), never silently.

Hand-written because no maintained library integrates a 2-D posterior adaptively with an error
estimate per replicate under a vectorised batch (R-INLA's integration is R-only and has no error
estimate; scipy's cubature evaluates point by point).
"""
from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from scipy.interpolate import PchipInterpolator, RectBivariateSpline
from scipy.special import logsumexp

__all__ = [
    "CHAIN_METHODS", "FIT_STATS", "QuadratureConfig", "QuadratureResult", "Quadrature", "integrate",
    "posterior_quantiles", "posterior_moments", "check_quadrature_model",
]

CHAIN_METHODS = ("sequential", "vectorized", "parallel")
PROBS = (0.05, 0.5, 0.95)  # the quantiles the error estimate covers
HELD_OUT_ORDER = 4.0  # 2^2: the held-out interpolation error at 2h over that at h, second order
RICHARDSON = 15.0  # 2^4 - 1: the change between steps 2h and h over the error at h, fourth-order rule


@dataclass(frozen=True)
class QuadratureConfig:
    """Options of the quadrature method (the one source of its defaults; a Hydra ``sampler`` schema).

    tolerance: certified error bound: log mass in nats; means, sds and 5/50/95 % quantiles of both
        parameters (log and natural scale) in posterior sds.
    dz: initial lattice step in whitened (Laplace-standardised) units.
    log_density_drop: D, the walk stops at nodes whose log density is more than D below the top.
    max_nodes: likelihood evaluations per replicate at most (mode search included).
    max_refinements: step halvings at most.
    max_radius: the lattice reaches at most this far from the centre (whitened units).
    num_draws: L, independent posterior draws per replicate (for SBC ranks).
    fine_grid: cells per axis of the fine grid on which quantiles, moments and draws are computed.
    seed_steps: Newton iterations at most for the seed (Gaussian-approximation posterior).
    polish_steps: stencil Newton iterations at most on the model's own likelihood.
    chain_method: ``vectorized`` (a batch of replicates per likelihood call), ``sequential`` (one
        replicate at a time) or ``parallel`` (batches spread over the local JAX devices, one thread each).
    batch_size: replicates per batch (0: all at once).
    exact_likelihood: how the exact (marginal) likelihood is evaluated at many points: ``grid``
        (:func:`noisydot_sbc.likelihoods.loglik_grid`, two-phase) or ``map`` (``lax.map`` over points
        in small batches); identical values, different cost profiles.
    exact_stride: k, for a model with a cheap approximation of its likelihood (``marginal``: the
        Gaussian one): the exact likelihood is evaluated on the sublattice of every k-th node per
        axis (step k·dz), on the sublattice of stride k/2 where the mass is (``exact_core_drop``)
        and at check nodes; every other node gets the approximation plus the bicubic interpolant
        of the correction Δ = exact − approximate (smooth and small: the two posteriors differ by
        ~0.1 posterior sds under the strong prior). The interpolant's error, measured at check
        nodes, enters the error estimate; above the tolerance the sublattice step is halved. A
        power of 2; 1: the exact likelihood at every node (no approximation used).
    exact_core_drop: where the log posterior is within this many nats of the top (the core, ~99.75 %
        of the mass), the exact likelihood is evaluated on the sublattice of half the stride.
    """

    name: str = "quadrature"
    tolerance: float = 0.01
    dz: float = 0.75
    log_density_drop: float = 12.0
    max_nodes: int = 1500
    max_refinements: int = 2
    max_radius: float = 25.0
    num_draws: int = 1000
    fine_grid: int = 160
    seed_steps: int = 60
    polish_steps: int = 4
    chain_method: str = "vectorized"
    batch_size: int = 0
    exact_likelihood: str = "grid"
    exact_stride: int = 4
    exact_core_drop: float = 6.0

    def validate(self) -> "QuadratureConfig":
        if self.name != "quadrature":
            raise ValueError(f"name must be 'quadrature' for QuadratureConfig, got {self.name!r}")
        positive = ("tolerance", "dz", "log_density_drop", "max_radius", "exact_core_drop")
        for f in positive:
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{f} must be a finite number > 0, got {v!r}")
        for f, lo in (("max_nodes", 9), ("num_draws", 1), ("fine_grid", 16), ("seed_steps", 1), ("polish_steps", 1)):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{f} must be an integer >= {lo}, got {v!r}")
        for f in ("max_refinements", "batch_size"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{f} must be an integer >= 0, got {v!r}")
        k = self.exact_stride
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 or (k & (k - 1)):
            raise ValueError(f"exact_stride must be a power of 2 (1, 2, 4, ...), got {k!r}")
        if self.exact_likelihood not in ("grid", "map"):
            raise ValueError(f"exact_likelihood must be 'grid' or 'map', got {self.exact_likelihood!r}")
        if self.chain_method not in CHAIN_METHODS:
            raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {self.chain_method!r}")
        if self.dz * 2 > self.max_radius:
            raise ValueError(f"max_radius must be at least 2*dz, got {self.max_radius!r} with dz={self.dz!r}")
        return self


# replicate-level statistics the method declares: (name, kind, description)
FIT_STATS = (
    ("log_marginal_likelihood", "f", "log p(y) = log ∫ p(y|σ) p(σ) dσ by the trapezoid rule on the lattice"),
    ("error_estimate", "f", "estimated error: nats for the log mass, posterior sds for means/sds/quantiles"),
    ("certified", "b", "error_estimate <= tolerance within the node budget"),
    ("n_evaluations", "i", "likelihood evaluations (parameter points) for this replicate"),
    ("grid_step", "f", "final lattice step in whitened units"),
    ("boundary_mass", "f", "posterior mass on the walk's outer ring (truncation indicator)"),
    ("correction_error", "f", "error estimate's share from interpolating the exact-minus-approximate "
     "correction (0: exact likelihood at every node)"),
    ("exact_stride", "i", "final sublattice stride of the exact likelihood (1: exact at every node)"),
)


class QuadratureResult(NamedTuple):
    """Per-replicate output of :func:`integrate` (leading axis S everywhere).

    ``marginals[p] = (edges (S, F+1), cdf (S, F+1))``: the marginal CDF of log p, piecewise linear
    between the cell edges (the exact CDF of the draws' distribution). ``moments[p]``: dict with
    ``mean``, ``sd`` (natural scale) and ``log_mean``, ``log_sd`` (log scale), each (S,).
    ``draws[p]``: (S, L) signed draws (signs only where the prior gives σ < 0 mass).
    """

    params: tuple
    draws: dict
    marginals: dict
    moments: dict
    log_marginal_likelihood: np.ndarray
    error_estimate: np.ndarray
    certified: np.ndarray
    n_evaluations: np.ndarray
    grid_step: np.ndarray
    boundary_mass: np.ndarray
    correction_error: np.ndarray
    exact_stride: np.ndarray
    failed: np.ndarray
    error: list
    compile_time: float


# ---------------------------------------------------------------------------------------------
# the model's log density on z = (log|σ_x|, log|σ_w|)
# ---------------------------------------------------------------------------------------------

def check_quadrature_model(model):
    """ValueError unless ``model`` is a :class:`~noisydot_sbc.models.Model` with exactly the two noise levels."""
    for attr in ("name", "prior", "loglik", "y_noise"):
        if not hasattr(model, attr):
            raise ValueError(
                f"model must be a models.Model (build_model) for quadrature; got {type(model).__name__} without .{attr}"
            )
    if model.name == "latent":
        raise ValueError("model 'latent' has N*M latent weight-noise sites; quadrature integrates 2 parameters only "
                         "(use model 'marginal', its exact marginalisation)")
    if tuple(getattr(model, "params", ())) != _params():
        raise ValueError(f"model.params must be {_params()} for quadrature, got {getattr(model, 'params', None)!r}")
    if getattr(model, "shared_w_noise", False):
        raise ValueError("shared_w_noise=True makes observations dependent; quadrature needs the per-observation loglik")


def _params():
    from ...models import PARAMS

    return tuple(PARAMS)


def _folded_log_prior(dist_, s):
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
    lx, _ = _folded_log_prior(prior.x_noise_lvl.distribution(), s[..., 0])
    lw, _ = _folded_log_prior(prior.w_noise_lvl.distribution(), s[..., 1])
    return lx + lw + z[..., 0] + z[..., 1]


_JIT_CACHE: dict = {}
_SEEN_SHAPES: dict = {}
MAP_BATCH = 4  # points per vectorised step of the exact likelihood (see _Evaluator)
SEED_CHUNK = 32  # replicates per call of the compiled seed Newton
CHUNK = 64  # points per call of the compiled exact likelihood (see _Evaluator)
CHEAP_CHUNK = 2048  # points per call for closed-form likelihoods (gaussian)


def _cached(key, build):
    fn = _JIT_CACHE.get(key)
    if fn is None:
        fn = _JIT_CACHE[key] = build()
    return fn


def _likelihood_key(model):
    if model.name in ("marginal", "gaussian"):
        return (model.name, float(model.y_noise))
    return ("loglik", id(model.loglik))


def _point_loglik(model):
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


def _bucket(n: int) -> int:
    return max(8, 1 << (int(n) - 1).bit_length())


class _Evaluator:
    """Total log-likelihood at many parameter points per replicate, host level.

    The exact model uses :func:`noisydot_sbc.likelihoods.loglik_grid` where it exists (two-phase:
    fast pass for every point, robust tiers only for what it could not certify, gathered apart).
    Otherwise the (replicate, point) pairs are flattened and evaluated in chunks of CHUNK points
    by one compiled function (one shape, one compilation); for the exact likelihood the points
    of a chunk go through ``lax.map`` in batches of MAP_BATCH, because its robust tiers are
    while_loops and under ``vmap`` every round would be paid by the whole batch."""

    def __init__(self, model, data, use_grid=True):
        self.model = model
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
        key = ("chunk",) + _likelihood_key(model)
        point = _point_loglik(model)
        # the replicates' rows are gathered inside the compiled function (one dispatch per chunk)
        if model.name == "marginal":
            def build():
                return jax.jit(lambda Y, X, W, r, sx, sw: jax.lax.map(
                    lambda a: point(*a), (Y[r], X[r], W[r], sx, sw), batch_size=MAP_BATCH))
        else:
            def build():
                return jax.jit(lambda Y, X, W, r, sx, sw: jax.vmap(point)(Y[r], X[r], W[r], sx, sw))
        self.fn = _cached(key, build)
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
            res = self.grid(h["y"][rep_idx], h["x"][rep_idx], h["w"][rep_idx], sx, sw, float(self.model.y_noise))
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


class _GaussianEvaluator:
    """Total log-likelihood of the moment-matched Gaussian approximation at many points, from each
    replicate's sufficient statistics: with μ_n = Σ_i x_ni w_i, A_n = Σ_i w_i² x_ni² and
    B = Σ_i w_i², Var y_n = σ_w² A_n + σ_x² (1 + σ_w²) B + σ_y² (:func:`likelihoods.moments`), so a
    point costs O(N), not O(N M), and no (point, N, M) copy of x is formed (that copy, not the
    arithmetic, was the cost of evaluating the Gaussian model through :class:`_Evaluator`)."""

    def __init__(self, data, y_noise):
        x, w, y = (np.asarray(data[k], np.float64) for k in ("x", "w", "y"))
        dt = data["x"].dtype
        w2 = w * w
        self.r2 = jnp.asarray((y - np.einsum("snm,sm->sn", x, w)) ** 2, dt)
        self.a = jnp.asarray(np.einsum("snm,sm->sn", x * x, w2), dt)
        self.b = jnp.asarray(w2.sum(-1), dt)
        self.dt = dt
        self.y2 = float(y_noise) ** 2
        self.fn = _cached(("gaussian_stats", self.y2), lambda: jax.jit(self._total))

    @staticmethod
    def _total(r2, a, b, rows, sx, sw, y2):
        var = (sw * sw)[:, None] * a[rows] + ((sx * sx) * (1.0 + sw * sw) * b[rows])[:, None] + y2
        return -0.5 * jnp.sum(jnp.log(2.0 * jnp.pi * var) + r2[rows] / var, axis=-1)

    def __call__(self, rep_idx, z):
        """rep_idx (B,), z (B, K, 2) -> (loglik (B, K), zeros (B, K)): the same call as :class:`_Evaluator`."""
        B, K = z.shape[:2]
        if B == 0 or K == 0:
            return np.zeros((B, K)), np.zeros((B, K))
        zc = np.clip(z, -700.0, 700.0)
        rows = np.repeat(np.asarray(rep_idx), K)
        n = rows.size
        total = _bucket(n)
        pad = lambda a, fill: np.concatenate([a, np.full(total - n, fill)])
        out = self.fn(self.r2, self.a, self.b, jnp.asarray(pad(rows, rows[0])),
                      jnp.asarray(pad(np.exp(zc[..., 0]).ravel(), 1.0), self.dt),
                      jnp.asarray(pad(np.exp(zc[..., 1]).ravel(), 1.0), self.dt), self.y2)
        return np.asarray(out, np.float64)[:n].reshape(B, K), np.zeros((B, K))


# ---------------------------------------------------------------------------------------------
# 1. seed: Newton on the Gaussian-approximation posterior (exact autodiff derivatives, cheap)
# ---------------------------------------------------------------------------------------------

def _prior_key(prior):
    """(families, parameters): the families are static (compiled in), loc/scale are arguments."""
    fams = (prior.x_noise_lvl.family, prior.w_noise_lvl.family)
    pp = np.array([prior.x_noise_lvl.loc, prior.x_noise_lvl.scale, prior.w_noise_lvl.loc, prior.w_noise_lvl.scale],
                  np.float64)
    return fams, pp


def _traced_prior(fams, pp):
    from ...priors import Prior, ScalePrior

    return Prior("traced", ScalePrior(fams[0], pp[0], pp[1]), ScalePrior(fams[1], pp[2], pp[3]))


def _seed_fn(fams, total_loglik, steps):
    """Damped Newton (exact autodiff gradient and Hessian, eigenvalue-modified, backtracking) on
    ``total_loglik(y, x, w, sx, sw)`` + log prior, vectorised over replicates (prior parameters
    are arguments, so one compilation serves every prior of the same families)."""

    def lp(z, pp, y, x, w):
        return total_loglik(y, x, w, jnp.exp(z[0]), jnp.exp(z[1])) + _log_prior_z(_traced_prior(fams, pp), z)

    def newton(z0, pp, y, x, w):
        f = lambda z: lp(z, pp, y, x, w)

        def body(_, z):
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

        z = jax.lax.fori_loop(0, steps, body, z0)
        return z, -jax.hessian(f)(z), f(z)

    return jax.jit(jax.vmap(newton, (0, None, 0, 0, 0)))


def _prior_median_z(prior):
    """log of the prior median of |σ| per parameter (from 4000 fixed draws)."""
    d = prior.sample(jax.random.PRNGKey(0), (4000,))
    return np.log(np.array([np.median(np.abs(np.asarray(d[p]))) for p in _params()]))


def _whitening(neg_h):
    """C with C Cᵀ = (−H)⁻¹ (eigenvalues floored), batched (B, 2, 2)."""
    neg_h = 0.5 * (neg_h + np.swapaxes(neg_h, -1, -2))
    lam, vec = np.linalg.eigh(neg_h)
    top = np.max(np.abs(lam), axis=-1, keepdims=True)
    lam = np.maximum(np.abs(lam), 1e-8 * top + 1e-12)
    cov = np.einsum("bij,bj,bkj->bik", vec, 1.0 / lam, vec)
    return np.linalg.cholesky(cov)


WARP_START = 2.0  # lattice units from the centre where a stretched half-axis starts to stretch


def _softplus(x):
    return np.logaddexp(0.0, x)


def warp(v, a, b):
    """Smooth monotone per-axis map of lattice coordinates v to whitened u,
    u = v + a (sp(v − v₀) − sp(−v₀)) − b (sp(−v − v₀) − sp(−v₀)),  sp = softplus, v₀ = WARP_START:
    the identity near the centre (where the Hessian is right) and slope 1 + a (1 + b) far out on
    the positive (negative) side. After R-INLA's separate scalings of the two half-axes, made
    smooth so the spline and the trapezoid rule keep their accuracy."""
    v0 = WARP_START
    c = _softplus(-v0)
    return v + a * (_softplus(v - v0) - c) - b * (_softplus(-v - v0) - c)


def warp_slope(v, a, b):
    v0 = WARP_START
    sig = lambda x: 0.5 * (1.0 + np.tanh(0.5 * x))
    return 1.0 + a * sig(v - v0) + b * sig(-v - v0)


def _stretch(t_star, r):
    """Coefficient with warp(r) = t_star (t_star >= r) on one half-axis."""
    v0 = WARP_START
    return max(t_star - r, 0.0) / (_softplus(r - v0) - _softplus(-v0))


class _Frame(NamedTuple):
    """z = m + C warp(v): centre (2,), whitening (2, 2), warp coefficients a, b (2,) each."""

    m: np.ndarray
    C: np.ndarray
    a: np.ndarray
    b: np.ndarray

    def z(self, v):
        return self.m + warp(v, self.a, self.b) @ self.C.T

    def v(self, z):
        """Inverse map (per axis, by interpolation in a fine table of the monotone warp)."""
        u = np.linalg.solve(self.C, (z - self.m).T).T
        out = np.empty_like(u)
        for k in range(2):
            if self.a[k] == 0.0 and self.b[k] == 0.0:
                out[:, k] = u[:, k]
                continue
            hi = max(np.abs(u[:, k]).max(), 1.0)
            tab = np.linspace(-hi, hi, 8001)  # v within ±hi covers u within ±hi (|slope| >= 1)
            out[:, k] = np.interp(u[:, k], warp(tab, self.a[k], self.b[k]), tab)
        return out


def _half_axis_scales(ev, rep_idx, m, C, prior_lp, D, top, n_eval, max_nodes, rounds=5):
    """Extent of the region within D of the top along the four half-axes of the whitened frame,
    probed at t = r, 2r, 4r, ... (r = √(2D), where a Gaussian drops by D) while the drop stays
    below D. Returns (s₋, s₊) (B, 2) each: the extent over r, at least 1."""
    B = m.shape[0]
    r = math.sqrt(2.0 * D)
    dirs = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    scale = np.ones((B, 4))
    open_ = np.ones((B, 4), bool)
    prev_t = np.zeros((B, 4))
    prev_d = np.zeros((B, 4))
    for k in range(rounds):
        t = r * 2.0**k
        rows = np.nonzero(open_.any(1) & (n_eval + 4 <= max_nodes))[0]
        if rows.size == 0:
            break
        z = m[rows, None, :] + t * np.einsum("kj,bij->bki", dirs, C[rows])
        ll, _ = ev(rep_idx[rows], z)
        lp = ll + prior_lp(z)
        n_eval[rows] += 4
        drop = top[rows, None] - np.where(np.isfinite(lp), lp, -np.inf)
        for r_, b in enumerate(rows):
            for j in range(4):
                if not open_[b, j]:
                    continue
                d = drop[r_, j]
                if d >= D:  # crossed between prev_t and t: interpolate linearly in the drop
                    t_star = prev_t[b, j] + (t - prev_t[b, j]) * (D - prev_d[b, j]) / max(d - prev_d[b, j], 1e-12)
                    scale[b, j] = max(1.0, t_star / r)
                    open_[b, j] = False
                else:
                    prev_t[b, j], prev_d[b, j] = t, d
                    scale[b, j] = t / r * (2.0 if k == rounds - 1 else 1.0)
    s_pos = scale[:, [0, 2]]
    s_neg = scale[:, [1, 3]]
    return s_neg, s_pos


# ---------------------------------------------------------------------------------------------
# lattice bookkeeping
# ---------------------------------------------------------------------------------------------

class _Lattice:
    """Node values of one batch of replicates on the lattice u = h·(i − R, j − R)."""

    def __init__(self, B, h, R, k=None):
        self.h, self.R = h, R
        G = 2 * R + 1
        self.val = np.full((B, G, G), np.nan)
        self.err = np.zeros((B, G, G))
        # the corrected lattice (exact likelihood on the stride-k sublattice, k (B,)): exact and
        # approximate total log-likelihoods and the log prior per node (NaN: not evaluated)
        self.k = None if k is None else np.asarray(k, np.int64)
        if self.k is not None:
            self.ll = np.full((B, G, G), np.nan)
            self.gl = np.full((B, G, G), np.nan)
            self.lp = np.full((B, G, G), np.nan)

    def refined(self, sel, k_new):
        """The lattice of half the step for the replicates ``sel``: old node (i, j) -> (2i, 2j)."""
        new = _Lattice(int(np.sum(sel)), self.h / 2, 2 * self.R, None if self.k is None else k_new)
        names = ("val", "err") + (("ll", "gl", "lp") if self.k is not None else ())
        for name in names:
            getattr(new, name)[:, ::2, ::2] = getattr(self, name)[sel]
        return new

    @property
    def G(self):
        return 2 * self.R + 1

    def v(self, i, j):
        return self.h * np.stack([i - self.R, j - self.R], axis=-1)


_EIGHT = np.ones((1, 3, 3), bool)


def _at_nodes(ev, rep_idx, lat, mask, frames, prior_lp):
    """Log-likelihood, its error estimate and the log prior at the nodes ``mask`` (B, G, G), one
    likelihood call for the whole batch. The (replicate, node) pairs go to the likelihood as a flat
    list (one point per row), so replicates with fewer nodes than others cost no padded
    evaluations. Yields (b, i, j, ll, err, lp) per replicate with nodes."""
    rows = np.nonzero(mask.reshape(mask.shape[0], -1).any(1))[0]
    if rows.size == 0:
        return
    where, zs = [], []
    for b in rows:
        i, j = np.nonzero(mask[b])
        zs.append(frames[b].z(lat.v(i, j)))
        where.append((i, j))
    counts = np.array([i.size for i, _ in where])
    z = np.concatenate(zs)[:, None, :]  # (n, 1, 2)
    ll, err = ev(np.repeat(rep_idx[rows], counts), z)
    lp = prior_lp(z)[:, 0]
    ll, err = ll[:, 0], err[:, 0]
    ends = np.cumsum(counts)
    for r_, b in enumerate(rows):
        i, j = where[r_]
        sl = slice(ends[r_] - counts[r_], ends[r_])
        yield b, i, j, ll[sl], err[sl], lp[sl]


def _finite_or(a, fill):
    """a NaN or infinite value is no mass (log density -inf) or an unknown error (+inf), never a
    silent NaN downstream"""
    return np.where(np.isfinite(a), a, fill)


def _evaluate(ev, rep_idx, lat, pending, frames, prior_lp, n_eval):
    """Evaluate the model's log posterior at the pending nodes (B, G, G)."""
    for b, i, j, ll, err, lp in _at_nodes(ev, rep_idx, lat, pending, frames, prior_lp):
        lat.val[b, i, j] = _finite_or(ll + lp, -np.inf)
        lat.err[b, i, j] = _finite_or(err, np.inf)
        n_eval[b] += i.size


def _walk(evaluate, lat, D, max_nodes, n_eval, first, trim=True):
    """Flood the lattice outwards from what is known (first from the disk |u|²/2 < D as well):
    evaluate every unknown 8-neighbour of a node within D of the top, round by round.
    ``evaluate(lat, pending, n_eval)`` fills the pending nodes; with ``trim`` a round that would
    exceed a replicate's node budget keeps the nodes nearest the centre (for the corrected
    lattice, whose pending nodes are not all exact evaluations, the walk stops once the budget is
    spent instead). Returns capped (B,) bool: the walk reached the lattice edge or ran out of
    node budget."""
    B, G = lat.val.shape[0], lat.G
    ii, jj = np.meshgrid(np.arange(G), np.arange(G), indexing="ij")
    rad2 = ((ii - lat.R) ** 2 + (jj - lat.R) ** 2) * lat.h**2
    capped = np.zeros(B, bool)
    edge = np.zeros((G, G), bool)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    pending = np.zeros((B, G, G), bool)
    if first:
        pending = np.broadcast_to(rad2 / 2 < D, (B, G, G)) & np.isnan(lat.val)
    while True:
        if pending.any():
            budget = max_nodes - n_eval
            over = (pending.reshape(B, -1).sum(1) > budget) if trim else np.zeros(B, bool)
            pending = pending.copy()
            for b in np.nonzero(over)[0]:  # keep the nodes nearest the centre within budget
                i, j = np.nonzero(pending[b])
                drop = np.argsort(rad2[i, j], kind="stable")[max(int(budget[b]), 0):]
                pending[b, i[drop], j[drop]] = False
                capped[b] = True
            evaluate(lat, pending, n_eval)
        known = ~np.isnan(lat.val)
        top = np.max(np.where(known, lat.val, -np.inf).reshape(B, -1), axis=1)
        inside = known & (lat.val > (top - D)[:, None, None])
        capped |= (inside & edge).reshape(B, -1).any(1)
        frontier = ndimage.binary_dilation(inside, structure=_EIGHT) & ~known
        spent = n_eval >= max_nodes
        capped |= frontier.reshape(B, -1).any(1) & spent
        pending = frontier & ~spent[:, None, None]
        if not pending.any():
            return capped


# ---------------------------------------------------------------------------------------------
# the corrected lattice: the exact likelihood on sublattices, elsewhere a cheap approximation
# plus the interpolated correction
# ---------------------------------------------------------------------------------------------

CHECK_MASS = 0.999  # the check nodes: centres of the core cells holding this share of the mass
CHECK_MIN = 4       # ... and at least this many
CHECK_MAX = 12      # ... and at most this many: beyond, one node per stratum of equal mass, weighted by it


def _grid_mask(lat, k, offset=0):
    """(G, G) bool: the nodes at ``offset`` modulo stride k from the centre on both axes."""
    m = np.zeros((lat.G, lat.G), bool)
    m[(lat.R + offset) % k::k, (lat.R + offset) % k::k] = True
    return m


def _within(lat, b, drop):
    """(G, G) bool: replicate b's nodes whose log posterior is finite and within ``drop`` of the
    highest value known (all False where none is finite)."""
    fin = np.isfinite(lat.val[b])
    if not fin.any():
        return fin
    return fin & (np.where(fin, lat.val[b], -np.inf) > np.max(lat.val[b][fin]) - drop)


def _exact_valued(lat, b):
    """(G, G) bool: the nodes whose value is the exact log posterior: the outer sublattice (stride
    k), and the core sublattice (stride k/2) where it was evaluated."""
    k = int(lat.k[b])
    m = _grid_mask(lat, k)
    if k > 1:
        m |= _grid_mask(lat, k // 2) & ~np.isnan(lat.ll[b])
    return m


def _known_box(known, step, centre):
    """The bounding box of the known nodes of a square grid (index ``centre`` at coordinate 0,
    spacing ``step``): (row slice, column slice, row coordinates, column coordinates)."""
    rows, cols = np.nonzero(known.any(1))[0], np.nonzero(known.any(0))[0]
    ra, ca = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    return ra, ca, (np.arange(ra.start, ra.stop) - centre) * step, (np.arange(ca.start, ca.stop) - centre) * step


def _grid_spline(d, step):
    """Bicubic interpolating spline through the values ``d`` (n, n) of a square grid of spacing
    ``step`` centred on 0 (NaN: unknown; unknown nodes in the box of the known ones are filled by
    their nearest known value); a function of coordinates v (n, 2), clamped to that box."""
    known = np.isfinite(d)
    if not known.any():
        return lambda v: np.full(v.shape[0], -np.inf)  # no finite exact value: no mass anywhere
    if (~known).any():
        _, (ni, nj) = ndimage.distance_transform_edt(~known, return_indices=True)
        d = d[ni, nj]
    ra, ca, ua, ub = _known_box(known, step, (d.shape[0] - 1) // 2)
    box = d[ra, ca]
    if ua.size == 1 and ub.size == 1:
        return lambda v: np.full(v.shape[0], box[0, 0])
    if ua.size == 1 or ub.size == 1:  # one row or column of known nodes: interpolate along it
        axis, coords, line = (1, ub, box[0]) if ua.size == 1 else (0, ua, box[:, 0])
        return lambda v: np.interp(v[:, axis], coords, line)
    spl = RectBivariateSpline(ua, ub, box, kx=min(3, ua.size - 1), ky=min(3, ub.size - 1), s=0)
    return lambda v: spl.ev(np.clip(v[:, 0], ua[0], ua[-1]), np.clip(v[:, 1], ub[0], ub[-1]))


def _correction_fn(lat, b):
    """Δ̂(v) of replicate b at lattice coordinates v (n, 2): Δ = exact − approximate log-likelihood,
    interpolated in two levels. The outer spline runs through Δ on the stride-k sublattice; the
    core spline through the stride-k/2 sublattice, whose nodes carry Δ where it was evaluated (the
    core, where the mass is) and the outer spline's value elsewhere. Stride 1: the lattice itself."""
    k, R, h = int(lat.k[b]), lat.R, lat.h
    delta = lat.ll[b] - lat.gl[b]
    outer = _grid_spline(delta[R % k::k, R % k::k], k * h)
    if k == 1:
        return outer
    kc = k // 2
    known_outer = np.isfinite(delta[R % k::k, R % k::k])
    if not known_outer.any():
        return outer
    core = delta[R % kc::kc, R % kc::kc].copy()
    n = core.shape[0]
    c = (n - 1) // 2
    ii, jj = np.meshgrid(np.arange(n) - c, np.arange(n) - c, indexing="ij")
    # the core grid over the box of the outer sublattice's known nodes (beyond it: clamped anyway)
    ro, co = np.nonzero(known_outer.any(1))[0], np.nonzero(known_outer.any(0))[0]
    c_o = (known_outer.shape[0] - 1) // 2
    inbox = ((ii >= 2 * (ro[0] - c_o)) & (ii <= 2 * (ro[-1] - c_o)) & (jj >= 2 * (co[0] - c_o))
             & (jj <= 2 * (co[-1] - c_o)))
    fill = ~np.isfinite(core) & inbox
    if fill.any():
        core[fill] = outer(kc * h * np.stack([ii[fill], jj[fill]], -1))
    core[~inbox] = np.nan
    return _grid_spline(core, kc * h)


class _Corrected:
    """Evaluation on the corrected lattice: ``evaluate(lat, pending, n_eval)`` for :func:`_walk`.

    Every pending node gets the approximation plus Δ̂ (the correction known so far); the
    sublattice corners of its cell are evaluated exactly first where that value is within
    D + 2 nats of the top (the walk's outer ring needs no exact correction), and the core
    sublattice (stride k/2) is evaluated exactly wherever the log posterior is within
    ``core_drop`` of the top. Nodes on the outer sublattice and evaluated core nodes carry the
    exact log posterior. ``n_eval`` counts exact evaluations (the cost; the approximation costs
    O(N) per point). Values off those nodes are recomputed from the latest Δ̂ by :meth:`refresh`
    (a spline through more nodes changes slightly everywhere)."""

    def __init__(self, ev, ev_approx, rep_idx, frames, prior_lp, core_drop, drop):
        self.ev, self.ev_approx, self.rep_idx, self.frames, self.prior_lp = ev, ev_approx, rep_idx, frames, prior_lp
        self.core_drop, self.drop = float(core_drop), float(drop)
        self._fns = {}       # replicate -> its current Δ̂ (rebuilt only after new exact values)
        self._fresh = set()  # replicates whose values off the exact nodes all come from that Δ̂

    def correction(self, lat, b):
        fn = self._fns.get(b)
        if fn is None:
            fn = self._fns[b] = _correction_fn(lat, b)
            self._fresh.discard(b)
        return fn

    def exact(self, lat, mask, n_eval):
        """Exact (and approximate) values at the nodes ``mask`` not yet evaluated exactly."""
        mask = mask & np.isnan(lat.ll)
        self.approx(lat, mask)
        for b, i, j, ll, err, _ in _at_nodes(self.ev, self.rep_idx, lat, mask, self.frames, self.prior_lp):
            lat.ll[b, i, j] = _finite_or(ll, -np.inf)
            lat.err[b, i, j] = _finite_or(err, np.inf)
            n_eval[b] += i.size
            self._fns.pop(b, None)
            on = _exact_valued(lat, b)[i, j]
            lat.val[b, i[on], j[on]] = _finite_or(lat.ll[b, i[on], j[on]] + lat.lp[b, i[on], j[on]], -np.inf)

    def approx(self, lat, mask):
        mask = mask & np.isnan(lat.gl)
        for b, i, j, ll, _, lp in _at_nodes(self.ev_approx, self.rep_idx, lat, mask, self.frames, self.prior_lp):
            lat.gl[b, i, j] = _finite_or(ll, -np.inf)
            lat.lp[b, i, j] = _finite_or(lp, -np.inf)

    def refresh(self, lat, rows=None):
        """val = approximation + Δ̂ + log prior at every evaluated node without an exact value."""
        for b in range(lat.val.shape[0]) if rows is None else rows:
            fn = self.correction(lat, b)
            off = ~np.isnan(lat.gl[b]) & ~_exact_valued(lat, b)
            if b in self._fresh:  # the same Δ̂ as last time: only the nodes evaluated since
                off &= np.isnan(lat.val[b])
            self._fresh.add(b)
            if not off.any():
                continue
            i, j = np.nonzero(off)
            lat.val[b, i, j] = _finite_or(lat.gl[b, i, j] + fn(lat.v(i, j)) + lat.lp[b, i, j], -np.inf)

    def __call__(self, lat, pending, n_eval):
        self.approx(lat, pending)
        rows = np.nonzero(pending.reshape(pending.shape[0], -1).any(1))[0]
        self.refresh(lat, rows)
        need = np.zeros_like(pending)
        R = lat.R
        for b in rows:
            if np.isfinite(lat.ll[b]).any() and np.isfinite(lat.val[b]).any():
                i, j = np.nonzero(pending[b] & _within(lat, b, self.drop + 2.0))
            else:  # no finite exact value yet (the stencil was not placed): every pending node's corners
                i, j = np.nonzero(pending[b])
            k = int(lat.k[b])
            oi, oj = (i - R) % k, (j - R) % k
            for a in (i - oi, i - oi + k * (oi > 0)):
                for c in (j - oj, j - oj + k * (oj > 0)):
                    need[b, a, c] = True
        self.exact(lat, need, n_eval)
        self.refresh(lat, rows)
        self.core(lat, n_eval, rows)

    def core(self, lat, n_eval, rows=None, rounds=3):
        """Exact values on the core sublattice (stride k/2) wherever the log posterior is within
        ``core_drop`` of the top: the correction is interpolated at twice the resolution where the
        mass is, and at stride k in the tails, where its error carries little mass."""
        rows = np.arange(lat.val.shape[0]) if rows is None else np.asarray(rows)
        for _ in range(rounds):
            need = np.zeros(lat.val.shape, bool)
            for b in rows:
                k = int(lat.k[b])
                if k == 1:
                    continue
                need[b] = (_grid_mask(lat, k // 2) & np.isnan(lat.ll[b]) & ~np.isnan(lat.gl[b])
                           & _within(lat, b, self.core_drop))
            if not need.any():
                return
            self.exact(lat, need, n_eval)
            self.refresh(lat, np.nonzero(need.reshape(need.shape[0], -1).any(1))[0])

    def check(self, lat, n_eval, max_nodes):
        """The interpolant's error at check nodes: the centres of the core sublattice's cells
        (stride k/2; for k = 2 the centres of the stride-2 cells) that hold CHECK_MASS of the
        posterior mass (at least CHECK_MIN), where a cubic interpolant's error is largest.
        Beyond CHECK_MAX candidates, one node per stratum of equal mass, weighted by the stratum.
        Per replicate: None (stride 1: no correction), ``"budget"`` (node budget spent: no
        estimate) or dict(z (n, 2), weight (n,) mass shares, eps (n,) = Δ − Δ̂ in nats), Δ̂ the
        interpolant before the check nodes were evaluated."""
        B = lat.val.shape[0]
        out = [None] * B
        chosen = np.zeros(lat.val.shape, bool)
        predicted = {}
        for b in range(B):
            k = int(lat.k[b])
            if k == 1:
                continue
            period = max(k // 2, 2)
            cen = (_grid_mask(lat, period, period // 2) & np.isfinite(lat.val[b]) & np.isfinite(lat.gl[b])
                   & ~_exact_valued(lat, b))
            i, j = np.nonzero(cen)
            if i.size == 0:
                out[b] = "budget"
                continue
            v = lat.val[b, i, j]
            order = np.argsort(-v, kind="stable")
            w = np.exp(v[order] - v[order[0]])
            cum = np.cumsum(w) / w.sum()
            n = min(max(min(CHECK_MIN, i.size), int(np.searchsorted(cum, CHECK_MASS)) + 1), i.size)
            if n <= CHECK_MAX:
                sel, share = order[:n], w[:n] / w[:n].sum()
            else:  # strata of equal mass among the n heaviest; in each its heaviest node, weighted by the stratum
                edges = np.linspace(0.0, cum[n - 1], CHECK_MAX + 1)
                first = np.searchsorted(cum[:n], edges[:-1], side="right")
                first = np.unique(np.minimum(first, n - 1))
                last = np.append(first[1:], n)
                sel = order[first]
                share = np.array([w[f:l].sum() for f, l in zip(first, last)])
                share = share / share.sum()
            if n_eval[b] + np.isnan(lat.ll[b, i[sel], j[sel]]).sum() > max_nodes:
                out[b] = "budget"
                continue
            chosen[b, i[sel], j[sel]] = True
            predicted[b] = (i[sel], j[sel], self.correction(lat, b)(lat.v(i[sel], j[sel])), share)
        self.exact(lat, chosen, n_eval)
        for b, (i, j, approx, share) in predicted.items():
            vv = lat.v(i, j)
            fr = self.frames[b]
            logw = np.log(share) + np.log(warp_slope(vv, fr.a, fr.b)).sum(1)
            with np.errstate(invalid="ignore"):
                eps = (lat.ll[b, i, j] - lat.gl[b, i, j]) - approx
            both = np.isneginf(lat.ll[b, i, j]) & ~np.isfinite(approx + lat.gl[b, i, j])
            eps = np.where(both, 0.0, np.where(np.isfinite(eps), eps, np.inf))
            out[b] = dict(z=fr.z(vv), weight=np.exp(logw - np.max(logw)), eps=eps)
        return out


def correction_error(check, summary) -> float:
    """Error estimate of the corrected lattice from its check nodes (see :meth:`_Corrected.check`).

    If the true log density is the corrected one plus e(z), a summary T moves to first order by
    Cov_p(e, ψ_T), ψ_T its influence function, and |Cov_p(e, ψ_T)| <= sd_p(e) · sd_p(ψ_T). Both
    sds are taken over the check nodes weighted by their cell masses, for every summary of the
    error estimate (log-scale mean and sd, 5/50/95 % quantiles: ψ = (1{z <= q} − α) / f(q); natural
    mean and sd), in posterior sds; the log mass moves by the weighted mean of e (nats). The largest
    of these is returned: a bound that needs no cancellation, only that the check nodes (the
    centres of the cells, where the interpolant is worst) sample e."""
    if check is None:
        return 0.0
    if isinstance(check, str):
        return float("inf")
    eps, w, z = check["eps"], check["weight"], check["z"]
    if not np.all(np.isfinite(eps)):
        return float("inf")
    w = w / w.sum()
    mean_e = float(np.sum(w * eps))
    sd_e = math.sqrt(max(float(np.sum(w * (eps - mean_e) ** 2)), 0.0))
    worst = abs(mean_e)
    for k in range(2):
        sk = summary[k]
        zk = z[:, k]
        lsd = max(sk["log_sd"], 1e-300)
        nsd = max(sk["sd"], 1e-300)
        ez = np.exp(np.minimum(zk, 700.0))
        psis = [(zk - sk["log_mean"]) / lsd, ((zk - sk["log_mean"]) ** 2 - lsd**2) / (2 * lsd**2),
                (ez - sk["mean"]) / nsd, ((ez - sk["mean"]) ** 2 - nsd**2) / (2 * nsd**2)]
        edges, cdf = sk["edges"], sk["cdf"]
        dens = np.diff(cdf) / np.diff(edges)
        for prob, q in zip(PROBS, sk["q"]):
            f = dens[min(max(int(np.searchsorted(edges, q)) - 1, 0), dens.size - 1)]
            psis.append(((zk <= q).astype(float) - prob) / max(f * lsd, 1e-300))
        for psi in psis:
            m = float(np.sum(w * psi))
            worst = max(worst, sd_e * math.sqrt(max(float(np.sum(w * (psi - m) ** 2)), 0.0)))
    return worst


# ---------------------------------------------------------------------------------------------
# summaries of one replicate from its lattice (full and sublattice)
# ---------------------------------------------------------------------------------------------

class _Fine(NamedTuple):
    ax: tuple        # two (F,) cell centres in log σ
    width: tuple     # two cell widths
    logmass: np.ndarray  # (F, F) log cell masses (unnormalised)


def _spline_logdens(val, h, R, D):
    """Bicubic interpolating spline of the log density on the box of the known nodes (exact for a
    Gaussian: the spline reproduces quadratics). Unknown nodes of the box (beyond the walk's outer
    ring, all below top − D) are filled by the nearest known value minus 3 nats per node of
    distance, so the fill stays below the ring and its kinks ring only where there is no mass.
    Returns (spline, u-box ((lo, hi), (lo, hi)))."""
    known = ~np.isnan(val)
    finite = np.isfinite(val)
    if not finite.any():
        raise ValueError("no finite node")
    top = np.max(val[finite])
    v = np.where(known, np.maximum(val, top - D - 60.0), np.nan)  # zero likelihood: a finite very low value
    if (~known).any():
        dist, (ni, nj) = ndimage.distance_transform_edt(~known, return_indices=True)
        v = np.where(known, v, np.minimum(v[ni, nj], top - D) - 3.0 * dist)
    ra, ca, ua, ub = _known_box(known, h, R)
    if len(ua) < 2 or len(ub) < 2:
        raise ValueError("fewer than 2 known nodes along an axis")
    spl = RectBivariateSpline(ua, ub, v[ra, ca], kx=min(3, len(ua) - 1), ky=min(3, len(ub) - 1), s=0)
    return spl, ((ua[0], ua[-1]), (ub[0], ub[-1]))


def _fine_box(val, h, R, fr, D, F):
    """Fine grid (axes in log σ) covering the inside nodes of the full lattice plus one step."""
    known = np.isfinite(val)
    top = np.max(val[known])
    i, j = np.nonzero(known & (val > top - D))
    v = h * np.stack([i - R, j - R], -1)
    z = fr.z(v)
    pad = h * np.sqrt(((fr.C * (1.0 + np.maximum(fr.a, fr.b))) ** 2).sum(1))  # a lattice step, per log σ axis
    lo, hi = z.min(0) - pad, z.max(0) + pad
    ax, width = [], []
    for k in range(2):
        wk = (hi[k] - lo[k]) / F
        ax.append(lo[k] + wk * (np.arange(F) + 0.5))
        width.append(wk)
    return tuple(ax), tuple(width)


def _fine_logmass(spl, ubox, fr, ax, width):
    Z0, Z1 = np.meshgrid(ax[0], ax[1], indexing="ij")
    u = fr.v(np.stack([Z0, Z1], -1).reshape(-1, 2))  # lattice coordinates of the fine cells
    inb = (u[:, 0] >= ubox[0][0]) & (u[:, 0] <= ubox[0][1]) & (u[:, 1] >= ubox[1][0]) & (u[:, 1] <= ubox[1][1])
    out = np.full(u.shape[0], -np.inf)
    if inb.any():
        out[inb] = spl.ev(u[inb, 0], u[inb, 1])
    return out.reshape(Z0.shape) + np.log(width[0] * width[1])


def _summaries(logmass, ax, width):
    """Means, sds (both scales) and quantiles (log scale) of both parameters from fine cell masses.

    The cell masses are the midpoint rule on the fine grid, which (like the trapezoid rule) is
    spectrally accurate for moments of a smooth, decaying density, so the moments are the exact
    posterior's (not those of the piecewise-constant density the draws come from). The marginal CDF
    at the cell edges is the cumulative sum with its δ² f'/24 term corrected, and quantiles
    interpolate it by monotone cubic (PCHIP)."""
    top = np.max(logmass)
    if not np.isfinite(top):
        raise ValueError("the fine grid holds no mass")
    p = np.exp(logmass - top)
    p = p / p.sum()
    out = {}
    for k in range(2):
        mk = p.sum(axis=1 - k)
        c, wk = ax[k], width[k]
        mean = float((mk * c).sum())
        var = float((mk * (c - mean) ** 2).sum())
        e1 = float((mk * np.exp(c)).sum())
        e2 = float((mk * np.exp(2 * c)).sum())
        edges = np.concatenate([[c[0] - wk / 2], c + wk / 2])
        # ∫_cell f = δ f(c) + δ³ f''(c)/24, so the cumulative midpoint sum misses δ² f'(edge)/24
        # = (m_k − m_{k−1})/24 at the edge between cells k−1 and k: corrected, the CDF is O(δ⁴)
        cdf = np.concatenate([[0.0], np.cumsum(mk)])
        cdf[1:-1] += (mk[1:] - mk[:-1]) / 24.0
        cdf = np.maximum.accumulate(np.clip(cdf, 0.0, 1.0))
        cdf[-1] = 1.0
        out[k] = dict(log_mean=mean, log_sd=math.sqrt(max(var, 0.0)), mean=e1, sd=math.sqrt(max(e2 - e1 * e1, 0.0)),
                      q=cdf_quantiles(edges, cdf, PROBS), edges=edges, cdf=cdf)
    return out


def cdf_quantiles(edges, cdf, probs):
    """Quantiles of a CDF known at ``edges`` (increasing): monotone cubic (PCHIP) inverse interpolation
    through the strictly increasing part."""
    keep = np.concatenate([[True], np.diff(cdf) > 1e-300])
    c, e = cdf[keep], edges[keep]
    if c.size < 2:
        return np.full(len(probs), e[0])
    return PchipInterpolator(c, e)(np.clip(probs, c[0], c[-1]))


def _discrepancy(a, b):
    """Largest change between two summaries, in posterior sds (of ``a``)."""
    worst = 0.0
    for k in range(2):
        sa, sb = a[k], b[k]
        lsd = max(sa["log_sd"], 1e-300)
        nsd = max(sa["sd"], 1e-300)
        worst = max(worst, abs(sa["log_mean"] - sb["log_mean"]) / lsd, abs(sa["log_sd"] - sb["log_sd"]) / lsd,
                    float(np.max(np.abs(sa["q"] - sb["q"]))) / lsd,
                    abs(sa["mean"] - sb["mean"]) / nsd, abs(sa["sd"] - sb["sd"]) / nsd)
    return worst


def _log_mass(val, h, R, fr):
    """log ∫ exp(lp) dz by the trapezoid rule in lattice coordinates (Jacobian of z(v) included)."""
    known = np.isfinite(val)
    i, j = np.nonzero(known)
    v = h * np.stack([i - R, j - R], -1)
    logjac = np.log(warp_slope(v, fr.a, fr.b)).sum(1) + math.log(abs(np.linalg.det(fr.C)))
    return float(logsumexp(val[known] + logjac)) + 2.0 * math.log(h)


def _assess(val, err, h, R, fr, D, F):
    """Summaries of the full lattice, error estimate vs its sublattice of step 2h."""
    ax, width = _fine_box(val, h, R, fr, D, F)
    spl, ubox = _spline_logdens(val, h, R, D)
    lm_full = _fine_logmass(spl, ubox, fr, ax, width)
    full = _summaries(lm_full, ax, width)
    # sublattice: every other node (the centre is node (R, R), so R must be kept even-aligned)
    sub = val[R % 2::2, R % 2::2]
    Rs = R // 2
    log_z = _log_mass(val, h, R, fr)
    try:
        spl2, ubox2 = _spline_logdens(sub, 2 * h, Rs, D)
        coarse = _summaries(_fine_logmass(spl2, ubox2, fr, ax, width), ax, width)
        # Richardson: the spline's interpolation error is O(h^4) (the trapezoid's on log p(y) far
        # smaller), so the change from 2h to h over-states the error at h by about 2^4 - 1
        change = max(_discrepancy(full, coarse), abs(log_z - _log_mass(sub, 2 * h, Rs, fr))) / RICHARDSON
        # held-out check: the 2h spline at the nodes it did not see, as an L1 error of the density
        # relative to their mass. A feature the coarse lattice under-resolves (a ridge one node
        # wide) shows here even where the summaries happen to agree; it is assumed to shrink at
        # least like h² (second order), not h⁴
        odd = np.isfinite(val)
        odd[R % 2::2, R % 2::2] = False
        i, j = np.nonzero(odd)
        if i.size:
            vv = h * np.stack([i - R, j - R], -1)
            inb = ((vv[:, 0] >= ubox2[0][0]) & (vv[:, 0] <= ubox2[0][1]) & (vv[:, 1] >= ubox2[1][0])
                   & (vv[:, 1] <= ubox2[1][1]))
            pred = np.full(i.size, -np.inf)
            pred[inb] = spl2.ev(vv[inb, 0], vv[inb, 1])
            top_ = np.max(val[np.isfinite(val)])
            true_p = np.exp(val[i, j] - top_)
            held = float(np.abs(np.exp(np.minimum(pred - top_, 50.0)) - true_p).sum() / max(true_p.sum(), 1e-300))
            change = max(change, held / HELD_OUT_ORDER)
    except ValueError:  # the sublattice is too small to compare against: no estimate, not certified
        change = np.inf
    known = np.isfinite(val)
    top = np.max(val[known])
    inside = known & (val > top - D)
    ring = known & ~inside
    w_all = np.exp(val[known] - top).sum()
    boundary = float(np.exp(val[ring] - top).sum() / w_all) if ring.any() else 0.0
    lik_err = float(np.max(err[inside])) if inside.any() else 0.0
    est = change + 10.0 * boundary + lik_err
    return dict(full=full, logmass=lm_full, ax=ax, width=width, log_z=log_z, error=est, boundary=boundary)


# ---------------------------------------------------------------------------------------------
# the integration of one batch
# ---------------------------------------------------------------------------------------------

def _stencil_newton(ev, rep_idx, m, C, prior_lp, dz, steps, n_eval, max_nodes):
    """Newton on the model's log posterior with the 3×3 stencil (central differences, spacing dz)
    in whitened coordinates. Moves m and re-whitens C in place; returns the last stencil's log
    posterior values, error estimates and log-likelihood values (B, 3, 3), which belong to the
    returned (m, C) (nodes of the lattice)."""
    B = m.shape[0]
    offs = np.array([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)], float) * dz
    active = np.ones(B, bool)
    vals = np.full((B, 3, 3), np.nan)
    errs = np.zeros((B, 3, 3))
    lls = np.full((B, 3, 3), np.nan)
    for it in range(steps):
        rows = np.nonzero(active & (n_eval + 9 <= max_nodes))[0]
        if rows.size == 0:
            break
        z = m[rows, None, :] + np.einsum("kj,bij->bki", offs, C[rows])
        ll, er = ev(rep_idx[rows], z)
        lp = ll + prior_lp(z)
        lp = np.where(np.isfinite(lp), lp, -np.inf)
        n_eval[rows] += 9
        f = lp.reshape(-1, 3, 3)
        vals[rows], errs[rows] = f, np.where(np.isfinite(er), er, np.inf).reshape(-1, 3, 3)
        lls[rows] = _finite_or(ll, -np.inf).reshape(-1, 3, 3)
        with np.errstate(invalid="ignore"):
            g = np.stack([(f[:, 2, 1] - f[:, 0, 1]) / (2 * dz), (f[:, 1, 2] - f[:, 1, 0]) / (2 * dz)], -1)
            hxx = (f[:, 2, 1] - 2 * f[:, 1, 1] + f[:, 0, 1]) / dz**2
            hyy = (f[:, 1, 2] - 2 * f[:, 1, 1] + f[:, 1, 0]) / dz**2
            hxy = (f[:, 2, 2] - f[:, 2, 0] - f[:, 0, 2] + f[:, 0, 0]) / (4 * dz**2)
        neg = -np.stack([np.stack([hxx, hxy], -1), np.stack([hxy, hyy], -1)], -2)
        good = np.isfinite(neg).all((1, 2)) & np.isfinite(g).all(1)
        last = it == steps - 1
        for r_, b in enumerate(rows):
            if not good[r_]:
                active[b] = False  # keep the seed whitening; the walk copes
                continue
            lam, vec = np.linalg.eigh(neg[r_])
            lam_f = np.maximum(np.abs(lam), 1e-3)
            step = vec @ ((vec.T @ g[r_]) / lam_f)
            norm = np.linalg.norm(step)
            if norm > 2.0:
                step *= 2.0 / norm
            if (norm < dz / 3 and lam.min() > 0.5 and lam.max() < 2.0) or last or n_eval[b] + 9 > max_nodes:
                active[b] = False  # converged (or out of steps): the stencil stays as lattice nodes
                continue
            m[b] = m[b] + C[b] @ step
            C[b] = np.linalg.cholesky(C[b] @ (vec @ np.diag(1.0 / lam_f) @ vec.T) @ C[b].T)
            vals[b], errs[b], lls[b] = np.nan, 0.0, np.nan  # moved: the old stencil is not on the new lattice
    return vals, errs, lls


_PRIOR_FNS: dict = {}


def _prior_lp_fn(prior):
    fams, pp = _prior_key(prior)
    fn = _PRIOR_FNS.get(fams)
    if fn is None:
        fn = _PRIOR_FNS[fams] = jax.jit(jax.vmap(lambda z, pp: _log_prior_z(_traced_prior(fams, pp), z), (0, None)))
    ppj = jnp.asarray(pp)

    def prior_lp(z):
        flat = np.asarray(z, np.float64).reshape(-1, 2)
        n = flat.shape[0]
        padded = np.zeros((_bucket(n), 2))
        padded[:n] = flat
        return np.asarray(fn(jnp.asarray(padded), ppj), np.float64)[:n].reshape(z.shape[:-1])

    return prior_lp


def _signed(d) -> bool:
    """Whether the prior puts mass on σ < 0 (then draws get signs; the likelihood sees |σ|)."""
    return bool(d.support(jnp.asarray(-1.0)))


def _integrate_batch(key, model, data, rep_idx, cfg: QuadratureConfig, ev: _Evaluator, ev_approx=None):
    B = rep_idx.size
    prior = model.prior
    D = float(cfg.log_density_drop)
    n_eval = np.zeros(B, np.int64)
    failed = np.zeros(B, bool)
    errors = [""] * B
    prior_lp = _prior_lp_fn(prior)

    # 1. seed: Newton on the Gaussian-approximation posterior (on the model itself where its
    #    likelihood is closed-form; the exact likelihood's derivatives are too costly here)
    dt = data["x"].dtype
    if model.name == "marginal":
        from ...likelihoods import gaussian_logpdf

        y_noise = float(model.y_noise)
        seed_key = ("gaussian", y_noise)
        total = lambda y, x, w, sx, sw: jnp.sum(gaussian_logpdf(y, x, w, sx, sw, y_noise))
    else:
        seed_key = _likelihood_key(model)
        point = _point_loglik(model)
        total = lambda y, x, w, sx, sw: point(y, x, w, sx, sw)[0]
    fams, pp = _prior_key(prior)
    seed = _cached(("seed", fams, seed_key, cfg.seed_steps), lambda: _seed_fn(fams, total, cfg.seed_steps))
    zmed = _prior_median_z(prior)
    m = np.empty((B, 2))
    nh = np.empty((B, 2, 2))
    for c in range(0, B, SEED_CHUNK):  # fixed-size chunks: one compiled shape
        idx = rep_idx[c:c + SEED_CHUNK]
        n = idx.size
        pad = np.concatenate([idx, np.full(SEED_CHUNK - n, idx[0])])
        zs, nh_c, _ = seed(jnp.asarray(np.tile(zmed, (SEED_CHUNK, 1)), dt), jnp.asarray(pp, dt), data["y"][pad],
                           data["x"][pad], data["w"][pad])
        m[c:c + n] = np.asarray(zs, np.float64)[:n]
        nh[c:c + n] = np.asarray(nh_c, np.float64)[:n]
    bad = ~(np.isfinite(m).all(1) & np.isfinite(nh).all((1, 2)))
    m[bad] = zmed
    nh[bad] = np.eye(2)
    C = _whitening(nh)

    # 2. polish on the model's own likelihood (stencil Newton); 2b. half-axis extents -> warp
    #    (on the corrected lattice probed on the approximation, shifted by the correction at the
    #    centre: the extents shape the lattice only, the walk goes wherever the mass is)
    h = float(cfg.dz)
    k0 = int(cfg.exact_stride) if ev_approx is not None else 1
    corrected = k0 > 1
    vals, errs, lls = _stencil_newton(ev, rep_idx, m, C, prior_lp, h, cfg.polish_steps, n_eval, cfg.max_nodes)
    top = np.where(np.isfinite(vals).any((1, 2)), np.nanmax(np.where(np.isfinite(vals), vals, -np.inf), axis=(1, 2)),
                   -np.inf)
    if corrected:
        gl_c, _ = ev_approx(rep_idx, m[:, None, :])
        shift = _finite_or(lls[:, 1, 1] - gl_c[:, 0], 0.0)
        s_neg, s_pos = _half_axis_scales(ev_approx, rep_idx, m, C, prior_lp, D, top - shift, np.zeros(B, np.int64),
                                         cfg.max_nodes)
    else:
        s_neg, s_pos = _half_axis_scales(ev, rep_idx, m, C, prior_lp, D, top, n_eval, cfg.max_nodes)
    r0 = math.sqrt(2.0 * D)
    a_w = np.vectorize(lambda s: _stretch(s * r0, r0))(s_pos)
    b_w = np.vectorize(lambda s: _stretch(s * r0, r0))(s_neg)
    frames = [_Frame(m[i], C[i], a_w[i], b_w[i]) for i in range(B)]
    R = int(math.ceil(cfg.max_radius / h))
    R += (-R) % (2 * k0)  # a multiple of 2·k0: the sublattices of steps 2h and k0·h contain the centre
    lat = _Lattice(B, h, R, np.full(B, k0) if corrected else None)
    # the stencil's nodes are lattice nodes only where the warp is the identity near the centre
    same = (b_w == 0.0).all(1) & (a_w == 0.0).all(1)
    lat.val[same, R - 1:R + 2, R - 1:R + 2] = vals[same]
    lat.err[same, R - 1:R + 2, R - 1:R + 2] = errs[same]
    corr_err = np.zeros(B)
    checks = [None] * B
    if corrected:
        corr = _Corrected(ev, ev_approx, rep_idx, frames, prior_lp, cfg.exact_core_drop, D)
        lat.ll[same, R - 1:R + 2, R - 1:R + 2] = lls[same]
        placed = np.zeros(lat.val.shape, bool)
        placed[same, R - 1:R + 2, R - 1:R + 2] = True
        corr.approx(lat, placed)
        corr.refresh(lat)
        evaluate = corr
    else:
        evaluate = lambda lat_, pending, n_ev: _evaluate(ev, rep_idx, lat_, pending, frames, prior_lp, n_ev)

    # 3. walk; 4.-5. assess, refine the replicates above tolerance (a sub-batch each level)
    capped = _walk(evaluate, lat, D, cfg.max_nodes, n_eval, first=True, trim=not corrected)
    if corrected:
        corr.refresh(lat)
        checks = corr.check(lat, n_eval, cfg.max_nodes)
    results = [None] * B
    level_h = np.full(B, h)
    stride = np.full(B, k0)
    cur = np.arange(B)  # replicates (of this batch) on the current lattice
    for level in range(cfg.max_refinements + 1):
        for r_, b in enumerate(cur):
            v = lat.val[r_]
            if not np.isfinite(v).any():
                failed[b], errors[b] = True, "log posterior is -inf or NaN at every lattice node"
                continue
            try:
                results[b] = _assess(v, lat.err[r_], lat.h, lat.R, frames[b], D, cfg.fine_grid)
            except (ValueError, np.linalg.LinAlgError) as err:
                failed[b], errors[b] = True, f"quadrature summary failed: {err}"
                continue
            corr_err[b] = correction_error(checks[b], results[b]["full"])
            results[b]["error"] += corr_err[b]
            level_h[b] = lat.h
            stride[b] = 1 if lat.k is None else lat.k[r_]
        sel = np.array([results[b] is not None and not failed[b] and (results[b]["error"] > cfg.tolerance)
                        and n_eval[b] < cfg.max_nodes for b in cur], bool)
        if level == cfg.max_refinements or not sel.any():
            break
        # halve the step for the replicates above tolerance: old node (i, j) -> (2i, 2j). On the
        # corrected lattice the exact sublattices keep their steps (stride 2k) unless the
        # correction's interpolation is the larger share of the error: then they halve too
        k_new = None
        if corrected:
            k_cur = lat.k[sel]
            sb = cur[sel]
            rest = np.array([results[b]["error"] for b in sb]) - corr_err[sb]
            shrink = (corr_err[sb] > 0.5 * cfg.tolerance) & (corr_err[sb] >= rest) & (k_cur > 1)
            k_new = np.where(shrink, k_cur, 2 * k_cur)
        lat = lat.refined(sel, k_new)
        cur = cur[sel]
        ne = n_eval[cur].copy()
        sub_frames = [frames[i] for i in cur]
        if corrected:
            corr = _Corrected(ev, ev_approx, rep_idx[cur], sub_frames, prior_lp, cfg.exact_core_drop, D)
            on = np.stack([_grid_mask(lat, int(lat.k[r_])) for r_ in range(cur.size)]) & np.isfinite(lat.gl)
            corr.exact(lat, on, ne)  # the new sublattice nodes in the known region
            corr.refresh(lat)
            corr.core(lat, ne)
            evaluate = corr
        else:
            sub_idx = rep_idx[cur]
            evaluate = lambda lat_, pending, n_ev: _evaluate(ev, sub_idx, lat_, pending, sub_frames, prior_lp, n_ev)
        capped[cur] = _walk(evaluate, lat, D, cfg.max_nodes, ne, first=False, trim=not corrected)
        if corrected:
            corr.refresh(lat)
            for b, c in zip(cur, corr.check(lat, ne, cfg.max_nodes)):
                checks[b] = c
        n_eval[cur] = ne

    # outputs: draws (inverse CDF on the fine grid), marginals, moments, fit statistics
    F = cfg.fine_grid
    L = int(cfg.num_draws)
    params = _params()
    draws = {p: np.full((B, L), np.nan) for p in params}
    marg = {p: (np.full((B, F + 1), np.nan), np.full((B, F + 1), np.nan)) for p in params}
    mom = {p: {k: np.full(B, np.nan) for k in ("mean", "sd", "log_mean", "log_sd")} for p in params}
    log_z = np.full(B, np.nan)
    err_est = np.full(B, np.inf)
    certified = np.zeros(B, bool)
    boundary = np.full(B, np.nan)
    keys = jax.random.split(key, B)
    uni = np.asarray(jax.vmap(lambda k: jax.random.uniform(k, (L, 5), jnp.float64))(keys))
    dists = (prior.x_noise_lvl.distribution(), prior.w_noise_lvl.distribution())
    signed = tuple(_signed(d) for d in dists)
    for b in range(B):
        r = results[b]
        if failed[b] or r is None:
            failed[b] = True
            errors[b] = errors[b] or "quadrature produced no result"
            continue
        lm = r["logmass"]
        p = np.exp(lm - np.max(lm)).ravel()
        cum = np.cumsum(p)
        cum /= cum[-1]
        cell = np.minimum(np.searchsorted(cum, uni[b, :, 0], side="right"), cum.size - 1)
        ci, cj = np.unravel_index(cell, lm.shape)
        zx = r["ax"][0][ci] + (uni[b, :, 1] - 0.5) * r["width"][0]
        zw = r["ax"][1][cj] + (uni[b, :, 2] - 0.5) * r["width"][1]
        for k, (pname, zk) in enumerate(zip(params, (zx, zw))):
            s = np.exp(zk)
            if signed[k]:
                _, lneg = _folded_log_prior(dists[k], jnp.asarray(s))
                s = np.where(uni[b, :, 3 + k] < np.exp(np.asarray(lneg)), -s, s)
            draws[pname][b] = s
            summ = r["full"][k]
            marg[pname][0][b], marg[pname][1][b] = summ["edges"], summ["cdf"]
            for name in mom[pname]:
                mom[pname][name][b] = summ[name]
        log_z[b] = r["log_z"]
        err_est[b] = r["error"] if not capped[b] else max(r["error"], 10.0 * r["boundary"], cfg.tolerance * 1.0001)
        boundary[b] = r["boundary"]
        certified[b] = bool(np.isfinite(err_est[b]) and err_est[b] <= cfg.tolerance and not capped[b])
        if not np.isfinite(log_z[b]):
            failed[b], errors[b] = True, "log marginal likelihood is not finite"
    return dict(draws=draws, marginals=marg, moments=mom, log_marginal_likelihood=log_z, error_estimate=err_est,
                certified=certified, n_evaluations=n_eval, grid_step=level_h, boundary_mass=boundary,
                correction_error=corr_err, exact_stride=stride, failed=failed, error=errors)


def _approximation_model(model, approximation):
    """The Model whose likelihood serves as the cheap approximation (None: no corrected lattice)."""
    from ...models import Model, build_model

    if approximation is None:
        if model.name != "marginal":
            return None
        return build_model("gaussian", model.prior, model.y_noise)
    if not callable(approximation):
        raise ValueError(f"approximation must be a callable loglik(y, x, w, sx, sw) or None, got {approximation!r}")
    return Model("approximation", None, model.prior, float(model.y_noise), False, approximation)


def _check_data(data):
    for k in ("x", "w", "y"):
        if k not in data:
            raise ValueError(f"data must have keys 'x', 'w', 'y'; missing {k!r}")
    x, w, y = (np.asarray(data[k]) for k in ("x", "w", "y"))
    if x.ndim != 3:
        raise ValueError(f"data['x'] must have shape (S, N, M), got {x.shape}")
    S, N, M = x.shape
    if w.shape != (S, M):
        raise ValueError(f"data['w'] must have shape (S, M) = {(S, M)}, got {w.shape}")
    if y.shape != (S, N):
        raise ValueError(f"data['y'] must have shape (S, N) = {(S, N)}, got {y.shape}")
    for k, a in (("x", x), ("w", w), ("y", y)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"data[{k!r}] has non-finite values")
    return S


def integrate(key, model, data: dict, config: QuadratureConfig = QuadratureConfig(), progress=None,
              approximation=None) -> QuadratureResult:
    """Quadrature posterior of ``model`` for every replicate of ``data`` (x (S,N,M), w (S,M), y (S,N)).

    ``approximation``: a cheap approximation of the model's per-observation log-likelihood,
    ``loglik(y, x, w, sx, sw) -> (N,)``, for the corrected lattice (``config.exact_stride`` > 1);
    None: the Gaussian approximation for the ``marginal`` model, none for the others (their
    likelihood is evaluated at every node)."""
    config.validate()
    check_quadrature_model(model)
    approx_model = _approximation_model(model, approximation) if config.exact_stride > 1 else None
    S = _check_data(data)
    dtype = jnp.result_type(jnp.asarray(data["x"]).dtype, float)
    dev_data = {k: jnp.asarray(data[k], dtype) for k in ("x", "w", "y")}
    bs = S if config.batch_size == 0 else min(config.batch_size, S)
    if config.chain_method == "sequential":
        bs = 1
    batches = [np.arange(i, min(i + bs, S)) for i in range(0, S, bs)]
    keys = jax.random.split(key, len(batches))
    done = [0]

    def run(args):
        kb, idx, device = args
        dd = dev_data if device is None else {k: jax.device_put(v, device) for k, v in dev_data.items()}
        if model.name == "gaussian":  # the same values as gaussian_logpdf, O(N) per point
            ev = _GaussianEvaluator(dd, model.y_noise)
        else:
            ev = _Evaluator(model, dd, use_grid=config.exact_likelihood == "grid")
        if approx_model is None:
            ev_approx = None
        elif approx_model.name == "gaussian":
            ev_approx = _GaussianEvaluator(dd, approx_model.y_noise)
        else:
            ev_approx = _Evaluator(approx_model, dd)
        out = _integrate_batch(kb, model, dd, idx, config, ev, ev_approx)
        out["compile_time"] = getattr(ev, "compile_time", 0.0)
        done[0] += idx.size
        if progress is not None:
            progress(done[0] / S)
        return out

    devices = jax.local_devices()
    if config.chain_method == "parallel" and len(devices) > 1:
        jobs = [(k, idx, devices[i % len(devices)]) for i, (k, idx) in enumerate(zip(keys, batches))]
        with ThreadPoolExecutor(len(devices)) as pool:
            outs = list(pool.map(run, jobs))
    else:
        outs = [run((k, idx, None)) for k, idx in zip(keys, batches)]
    params = _params()
    cat = lambda name: np.concatenate([o[name] for o in outs])
    return QuadratureResult(
        params=params,
        draws={p: np.concatenate([o["draws"][p] for o in outs]) for p in params},
        marginals={p: tuple(np.concatenate([o["marginals"][p][i] for o in outs]) for i in range(2)) for p in params},
        moments={p: {k: np.concatenate([o["moments"][p][k] for o in outs]) for k in outs[0]["moments"][p]}
                 for p in params},
        log_marginal_likelihood=cat("log_marginal_likelihood"), error_estimate=cat("error_estimate"),
        certified=cat("certified"), n_evaluations=cat("n_evaluations"), grid_step=cat("grid_step"),
        boundary_mass=cat("boundary_mass"), correction_error=cat("correction_error"),
        exact_stride=cat("exact_stride"), failed=cat("failed"), error=sum((o["error"] for o in outs), []),
        compile_time=float(sum(o["compile_time"] for o in outs)),
    )


def posterior_quantiles(result: QuadratureResult, probs=PROBS) -> dict:
    """Posterior quantiles of |σ| per parameter: dict param -> (S, len(probs)) (exact CDF on the fine grid)."""
    probs = np.asarray(probs, float)
    if probs.ndim != 1 or np.any((probs < 0) | (probs > 1)):
        raise ValueError(f"probs must be a 1-D sequence in [0, 1], got {probs!r}")
    out = {}
    for p in result.params:
        edges, cdf = result.marginals[p]
        q = np.full((edges.shape[0], probs.size), np.nan)
        for s in range(edges.shape[0]):
            if np.all(np.isfinite(cdf[s])):
                q[s] = np.exp(cdf_quantiles(edges[s], cdf[s], probs))
        out[p] = q
    return out


def posterior_moments(result: QuadratureResult) -> dict:
    """dict param -> {mean, sd (of |σ|), log_mean, log_sd (of log|σ|)}, each (S,)."""
    return {p: dict(v) for p, v in result.moments.items()}


class Quadrature:
    """The quadrature inference method: ``fit(key, model, data, progress=None) -> Posterior``."""

    name = "quadrature"

    def __init__(self, config: QuadratureConfig | None = None, **options):
        base = config if config is not None else QuadratureConfig()
        if options:
            fields = {f.name for f in dataclasses.fields(QuadratureConfig)}
            unknown = sorted(set(options) - fields)
            if unknown:
                raise ValueError(f"unknown quadrature option(s) {unknown}; fields are {sorted(fields)}")
            base = dataclasses.replace(base, **options)
        self.config = base.validate()

    def fit(self, key, model, data: dict, progress=None):
        from .. import Posterior, StatSpec

        t0 = time.perf_counter()
        res = integrate(key, model, data, self.config, progress)
        wall = time.perf_counter() - t0
        samples = {p: res.draws[p][:, None, :] for p in res.params}
        fit_stats = {name: getattr(res, name) for name, _, _ in FIT_STATS}
        specs = tuple(StatSpec(name, "replicate", kind, desc) for name, kind, desc in FIT_STATS)
        info = dict(dataclasses.asdict(self.config))
        info["chain_method_resolved"] = (self.config.chain_method if self.config.chain_method != "parallel"
                                         or len(jax.local_devices()) > 1 else "vectorized")
        info["likelihood"] = ("loglik_grid" if _has_loglik_grid() and model.name == "marginal"
                              and self.config.exact_likelihood == "grid" else "lax.map" if model.name == "marginal"
                              else "vmap")
        return Posterior(
            samples=samples, sample_stats={}, fit_stats=fit_stats, stat_specs=specs, failed=res.failed,
            error=list(res.error), inference="quadrature", info=info, independent_draws=True,
            wall_time=wall, compile_time=res.compile_time,
        )


def _has_loglik_grid() -> bool:
    try:
        from ...likelihoods import loglik_grid  # noqa: F401
        return True
    except ImportError:
        return False
