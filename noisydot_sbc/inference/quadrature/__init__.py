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

Modules (imports run down this list): ``config`` (:class:`QuadratureConfig`, :data:`FIT_STATS`,
:class:`QuadratureResult`, :data:`PROBS`), ``evaluate`` (the prior on z, the likelihood evaluators
and their compiled-function cache, the seed Newton and whitening), ``lattice`` (the warp and
:class:`Frame`, half-axis extents, :class:`Lattice`, node evaluation, the walk, the stencil
Newton), ``corrected`` (the corrected lattice and :func:`correction_error`), ``summaries`` (the
spline of the log density, the fine grid, summaries, :func:`cdf_quantiles`, the error estimate),
``method`` (:func:`integrate`, :func:`posterior_quantiles`, :func:`posterior_moments`,
:class:`Quadrature`, :func:`check_quadrature_model`). This package re-exports the public API.
"""
from .config import CHAIN_METHODS, FIT_STATS, PROBS, QuadratureConfig, QuadratureResult
from .corrected import correction_error
from .evaluate import Evaluator, GaussianEvaluator
from .lattice import warp, warp_slope
from .method import Quadrature, check_quadrature_model, integrate, posterior_moments, posterior_quantiles
from .summaries import cdf_quantiles

__all__ = [
    "CHAIN_METHODS", "FIT_STATS", "PROBS", "QuadratureConfig", "QuadratureResult", "Quadrature", "integrate",
    "posterior_quantiles", "posterior_moments", "check_quadrature_model", "cdf_quantiles", "correction_error",
    "warp", "warp_slope", "Evaluator", "GaussianEvaluator",
]
