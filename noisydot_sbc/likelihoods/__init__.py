"""Pure-JAX likelihood building blocks for the noisy dot product (see shared design MATH.md and
docs/likelihood.md).

Conventions: x (N, M), w (M,), y (N,), noise levels scalars (broadcastable).

One module per job, each importing only from those listed before it:
:mod:`.gaussian` (the moments of y and the moment-matched Gaussian approximation),
:mod:`.cumulants` (the per-term parameters, the centred cumulant generating function and its
derivatives, the saddlepoint solver and the saddlepoint approximation), :mod:`.inversion` (the
Fourier-inversion passes through the saddlepoint: fast, vertical line, bent contour; their
:class:`InversionResult`, tolerances and error estimates), :mod:`.weight_noise` (the direct
quadratures over the weight noise: M = 1 over log|w̃|, M = 2 in polar coordinates), :mod:`.exact`
(the exact per-observation density: fast stage, robust tiers, custom JVP,
:func:`noisydot_logpdf_with_error`, :func:`noisydot_logpdf`) and :mod:`.grid` (:func:`loglik_grid`,
two-phase host-level evaluation at many parameter points). Every public name is re-exported here,
so ``from noisydot_sbc import likelihoods as L; L.X`` reaches it without naming the module.
"""
from .cumulants import (
    cgf,
    cgf_derivs,
    cgf_from_terms,
    saddlepoint,
    saddlepoint_from_terms,
    saddlepoint_logpdf,
    term_params,
)
from .exact import (
    FastStage,
    LogpdfResult,
    QuadratureOptions,
    fast_stage,
    noisydot_logpdf,
    noisydot_logpdf_with_error,
    quadrature_options,
    tier_names,
    tier_pass,
)
from .gaussian import gaussian_logpdf, moments
from .grid import GridResult, loglik_grid
from .inversion import (
    InversionResult,
    distrust,
    error_estimate,
    fast_pass,
    fourier_pass,
    tilted_pass,
    tolerances,
)
from .weight_noise import direct_m1_pass, polar_m2_pass

__all__ = [
    # gaussian
    "moments", "gaussian_logpdf",
    # cumulants
    "term_params", "cgf_from_terms", "cgf", "cgf_derivs", "saddlepoint_from_terms", "saddlepoint",
    "saddlepoint_logpdf",
    # inversion
    "InversionResult", "fast_pass", "fourier_pass", "tilted_pass", "tolerances", "distrust", "error_estimate",
    # weight_noise
    "direct_m1_pass", "polar_m2_pass",
    # exact
    "LogpdfResult", "QuadratureOptions", "quadrature_options", "FastStage", "fast_stage", "tier_names",
    "tier_pass", "noisydot_logpdf_with_error", "noisydot_logpdf",
    # grid
    "GridResult", "loglik_grid",
]
