"""What the quadrature method accepts and returns: its options (:class:`QuadratureConfig`), the
replicate-level statistics it declares (:data:`FIT_STATS`), its per-replicate output
(:class:`QuadratureResult`), the quantiles its error estimate covers (:data:`PROBS`) and the two
parameters it integrates (:func:`param_names`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

CHAIN_METHODS = ("sequential", "vectorized", "parallel")
PROBS = (0.05, 0.5, 0.95)  # the quantiles the error estimate covers


@dataclass(frozen=True)
class QuadratureConfig:
    """Options of the quadrature method (the one source of its defaults; a Hydra ``sampler`` schema).

    tolerance: certified error bound: log mass in nats; means, sds and 5/50/95 % quantiles of both
        parameters (log and natural scale) in posterior sds.
    dz: initial lattice step in whitened (Laplace-standardised) units. 0.375, half R-INLA's 0.75
        (2026-12-06): from 0.75 nearly every replicate was halved at least once (64 of 64 at
        N = 200, M = 8, strong prior), so its first walk and assessment were spent for nothing;
        from 0.375 most certify on their first lattice. Against the brute-force grids of the
        accuracy benchmark (32 replicates, N = 50) it certifies 24, every one with an error below
        its estimate (largest 0.0016 posterior sds). Before the correction was checked in the
        tail (see ``Corrected.check``) 0.375 certified one weak-prior replicate at 0.0020 whose
        error was 0.0166 sds, and 0.75 was kept.
    log_density_drop: D, the walk stops at nodes whose log density is more than D below the top.
    max_nodes: likelihood evaluations per replicate at most (mode search included; per attempt:
        the exact fallback has its own budget).
    max_refinements: step halvings at most. 4000 and 3 (raised from 1500 and 2 on 2026-12-06):
        under the weak prior at M = 1, N = 50 they certify 150 of 200 SBC replicates instead of
        109 (the rest were capped or one halving short), in 2 min 14 s instead of 1 min 32 s;
        under the strong prior (1000 replicates, N = 200, M = 8) 98.6 % certified instead of
        97.8 %, with 1 exact fallback instead of 19, in 2 min 29 s instead of 2 min 37 s.
    max_radius: the lattice reaches at most this far from the centre (whitened units); its
        arrays grow towards it only as the walk needs, so a large radius costs nothing where the
        posterior is compact. 50 (was 25 while the lattice was allocated whole): the walk of
        some weak-prior replicates reached 25 units, and at dz = 0.375 one strong-prior
        replicate's region within D of the top reached 27 units along a prior-dominated direction.
    num_draws: L, independent posterior draws per replicate (for SBC ranks).
    fine_grid: cells per axis of the fine grid on which quantiles, moments and draws are computed.
    seed_steps: Newton iterations at most for the seed (Gaussian-approximation posterior).
    polish_steps: stencil Newton iterations at most on the model's own likelihood.
    chain_method: ``parallel`` (the replicates split into batches integrated at once by threads:
        one per local JAX device, or two on a single CPU device, where one batch's host work
        overlaps the other's likelihood evaluations), ``vectorized`` (one batch: a batch of
        replicates per likelihood call) or ``sequential`` (one replicate at a time).
    batch_size: replicates per batch (0: automatic, at most 64, the replicates split evenly over
        the threads of ``parallel``).
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
    exact_fallback: a replicate that the corrected lattice leaves uncertified because of the
        correction's own error (``correction_error`` above the tolerance: the approximation is too
        far from the exact likelihood, as in heavy noise at M = 1) is integrated again with the
        exact likelihood at every node (its ``exact_stride`` is then 1; ``n_evaluations`` counts
        both attempts). False: report the corrected lattice's uncertified result.
    likelihood_tolerance: nats per node (summed over observations) to which the exact likelihood
        must be certain (``exact_likelihood: grid``): a fast-pass value whose error estimate is
        below this over N per observation is taken as it is; only the rest goes through the
        likelihood's robust tiers (:func:`~noisydot_sbc.likelihoods.loglik_grid`'s ``accept``).
        The node's estimate still enters the error estimate. 1e-4 is 100x below the default
        tolerance; the likelihood's own target (1e-9 per observation) spent about half the
        quadrature's likelihood time at N = 200, M = 8 on values already good to 1e-6. 0: that
        target everywhere.
    """

    name: str = "quadrature"
    tolerance: float = 0.01
    dz: float = 0.375
    log_density_drop: float = 12.0
    max_nodes: int = 4000
    max_refinements: int = 3
    max_radius: float = 50.0
    num_draws: int = 1000
    fine_grid: int = 160
    seed_steps: int = 60
    polish_steps: int = 4
    chain_method: str = "parallel"
    batch_size: int = 0
    exact_likelihood: str = "grid"
    exact_stride: int = 4
    exact_core_drop: float = 6.0
    exact_fallback: bool = True
    likelihood_tolerance: float = 1e-4

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
        lt = self.likelihood_tolerance
        if not (isinstance(lt, (int, float)) and not isinstance(lt, bool) and math.isfinite(lt) and lt >= 0):
            raise ValueError(f"likelihood_tolerance must be a finite number >= 0, got {lt!r}")
        k = self.exact_stride
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 or (k & (k - 1)):
            raise ValueError(f"exact_stride must be a power of 2 (1, 2, 4, ...), got {k!r}")
        if not isinstance(self.exact_fallback, (bool, np.bool_)):
            raise ValueError(f"exact_fallback must be true or false, got {self.exact_fallback!r}")
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
    ("error_estimate", "f", "estimated error: nats for the log mass, posterior sds for means/sds/quantiles "
     "(inf: the walk was cut short by the node budget or the lattice edge, no estimate)"),
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


def param_names():
    """The model's two parameter names, (σ_x site, σ_w site) (``models.PARAMS``)."""
    from ...models import PARAMS

    return tuple(PARAMS)
