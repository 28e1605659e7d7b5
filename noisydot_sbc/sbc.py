"""SBC statistics: thinning, ranks, uniformity tests, simultaneous ECDF bands, z-score/contraction.

Pure numpy/scipy functions on arrays with a leading replicate axis ``S``; no xarray here.

- Ranks (Talts et al. 2018): for each replicate, ``rank = #{draws < true}`` plus a uniformly random
  share of the ties, so that the rank of the true value among ``L`` posterior draws is uniform on
  ``0..L`` when the posterior is correct, also for discrete-valued test quantities.
- Test quantities (Modrák et al. 2023): any function ``f(θ, y)``; the caller evaluates it on the
  true parameters and on every kept draw, and :func:`rank_quantities` ranks each one.
- Uniformity tests: Pearson chi-square on binned ranks (bins that divide ``L + 1`` so every bin
  holds the same number of rank values) and the ECDF test of Säilynoja, Bürkner & Vehtari (2022),
  whose statistic is the smallest pointwise two-sided binomial p-value of the rank ECDF. Its null
  distribution is computed *exactly* by a recursion over the evaluation points (see
  :func:`_prob_inside`), so its p-value holds far into the tail.
- :func:`ecdf_simultaneous_band`: the simultaneous ``1 - alpha`` band for the rank ECDF (and for the
  ECDF difference), by adjusting the pointwise level ``gamma`` so that the whole ECDF stays inside
  with probability ``1 - alpha`` ('optimize': exact recursion + bisection, 'simulate': Monte Carlo
  with a seeded RNG). Results are cached.
- Posterior z-score and contraction (Schad, Betancourt & Vasishth 2021): the one
  implementation (identifiability uses it too).

Failed replicates are data: every function that takes a leading replicate axis accepts
``failed`` ((S,) bool). Those rows may hold NaN, never raise, and come back as NaN (floats) or
-1 (ranks); the uniformity tests leave them out and report how many they left out.
:func:`replicate_problems` finds the replicates a caller should mark failed (non-finite or
constant draws) with the reason to record.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from scipy import stats

from ._validation import as_array

__all__ = [
    "replicate_problems",
    "ThinnedDraws",
    "UniformityTest",
    "EcdfBand",
    "thin_draws",
    "thin_by_ess",
    "compute_ranks",
    "rank_quantities",
    "chi2_bins",
    "chi2_uniformity",
    "ecdf_eval_points",
    "ecdf_gamma_statistic",
    "ecdf_uniformity",
    "uniformity_tests",
    "ecdf_simultaneous_band",
    "posterior_mean_sd",
    "zscore_contraction",
]


# --------------------------------------------------------------------------- helpers


def _as_rng(key_or_rng) -> np.random.Generator:
    """numpy Generator from a Generator, an int seed, or a JAX PRNG key (raw uint32 or typed)."""
    if isinstance(key_or_rng, np.random.Generator):
        return key_or_rng
    if key_or_rng is None:
        raise ValueError("key_or_rng must be a numpy Generator, an int seed or a JAX PRNG key, got None")
    if isinstance(key_or_rng, (int, np.integer)):
        return np.random.default_rng(int(key_or_rng))
    try:  # JAX key (typed or raw uint32 array): derive a numpy seed from its bits.
        import jax

        arr = key_or_rng
        if hasattr(jax.dtypes, "prng_key") and jax.dtypes.issubdtype(getattr(arr, "dtype", None), jax.dtypes.prng_key):
            arr = jax.random.key_data(arr)
        bits = np.asarray(arr).astype(np.uint64).ravel()
        return np.random.default_rng([int(b) for b in bits])
    except Exception as exc:  # pragma: no cover - defensive
        raise ValueError(f"key_or_rng: cannot make a random generator from {type(key_or_rng)}") from exc


def _failed_mask(failed, s: int) -> np.ndarray:
    if failed is None:
        return np.zeros(s, bool)
    f = as_array("failed", failed, ndim=1, kind="b")
    if f.shape != (s,):
        raise ValueError(f"failed must have shape ({s},), got {f.shape}")
    return f


def replicate_problems(draws, true_values=None) -> list[str]:
    """Reason per replicate why its SBC statistics are undefined ("" where fine): non-finite
    draws, constant draws (zero posterior sd), a non-finite true value. ``draws`` (S, ...) with
    at least two draws per replicate, ``true_values`` (S,) optional. A caller marks the
    replicates with a reason as failed and records the reason."""
    d = as_array("draws", draws, finite=False)
    if d.ndim < 2:
        raise ValueError(f"draws must be (S, ...) with at least one draw axis, got shape {d.shape}")
    flat = d.reshape(d.shape[0], -1)
    out = []
    t = None if true_values is None else as_array("true_values", true_values, ndim=1, finite=False)
    if t is not None and t.shape[0] != flat.shape[0]:
        raise ValueError(f"draws has {flat.shape[0]} replicates but true_values has {t.shape[0]}")
    for i, row in enumerate(flat):
        if not np.all(np.isfinite(row)):
            out.append(f"{int(np.sum(~np.isfinite(row)))} non-finite draw(s)")
        elif t is not None and not np.isfinite(t[i]):
            out.append("non-finite true value")
        elif np.all(row == row[0]):
            out.append("constant draws (zero posterior sd)")
        else:
            out.append("")
    return out


# --------------------------------------------------------------------------- thinning


class ThinnedDraws(NamedTuple):
    """``draws`` (S, L) kept draws; ``spacing`` (S,) mean spacing between kept draws in iterations;
    ``sufficient`` (S,) bool: True where the effective sample size is at least ``L`` (the kept
    draws are near-independent)."""

    draws: np.ndarray
    spacing: np.ndarray
    sufficient: np.ndarray


def _even_indices(n_total: int, num_keep: int) -> np.ndarray:
    # Midpoints of num_keep equal cells of the chain-major flattened (chain*draw) axis. When
    # num_keep is a multiple of the number of chains every chain gets the same number of draws.
    return np.floor((np.arange(num_keep) + 0.5) * n_total / num_keep).astype(np.int64)


def thin_draws(draws, num_keep: int, failed=None) -> np.ndarray:
    """Keep ``num_keep`` draws per replicate, evenly spaced across chains and draws.

    ``draws``: (S, chain, draw). Returns (S, num_keep); rows of replicates marked ``failed``
    are NaN. Pick ``num_keep`` no larger than the smallest effective sample size (see
    :func:`thin_by_ess`) so that the kept draws are near-independent, as SBC ranks assume
    (Talts et al. 2018, section 5).
    """
    arr = as_array("draws", draws, ndim=3, finite=False)
    f = _failed_mask(failed, arr.shape[0])
    as_array("draws", arr, failed=f)
    s, c, d = arr.shape
    if not isinstance(num_keep, (int, np.integer)) or num_keep < 1:
        raise ValueError(f"num_keep must be a positive integer, got {num_keep!r}")
    if num_keep > c * d:
        raise ValueError(f"num_keep={num_keep} exceeds the {c * d} draws available per replicate (chain*draw)")
    kept = arr.reshape(s, c * d)[:, _even_indices(c * d, int(num_keep))].astype(float)
    kept[f] = np.nan
    return kept


def thin_by_ess(draws, ess, num_keep: int, failed=None) -> ThinnedDraws:
    """Thin to ``num_keep`` draws and report whether each replicate had ESS >= ``num_keep``.

    ``ess``: (S,) or (S, P) effective sample sizes (the smallest over parameters is used, e.g.
    ``ess_bulk``). Evenly spaced selection of ``num_keep`` out of ``n = chain*draw`` draws has
    spacing ``n / num_keep``; the draws are near-independent when that spacing is at least the
    autocorrelation time ``n / ESS``, i.e. when ``ESS >= num_keep``. Replicates with
    ``sufficient == False`` have autocorrelated kept draws: their ranks are biased towards the
    middle (a too-wide-looking posterior); rerun with more draws or report them. Failed
    replicates (``failed``) are NaN rows and ``sufficient == False``.
    """
    arr = as_array("draws", draws, ndim=3, finite=False)
    f = _failed_mask(failed, arr.shape[0])
    e = np.asarray(ess, dtype=float)
    if e.ndim == 2:
        e = e.min(axis=1)
    if e.shape != (arr.shape[0],):
        raise ValueError(f"ess must have shape ({arr.shape[0]},) or ({arr.shape[0]}, P), got {np.shape(ess)}")
    if np.any(np.isnan(e[~f])):
        raise ValueError("ess contains NaN in a replicate not marked failed (undefined effective sample size, "
                         "e.g. constant draws)")
    kept = thin_draws(arr, num_keep, failed=f)
    n_total = arr.shape[1] * arr.shape[2]
    spacing = np.full(arr.shape[0], n_total / num_keep)
    return ThinnedDraws(kept, spacing, (e >= num_keep) & ~f)


# --------------------------------------------------------------------------- ranks


def compute_ranks(key_or_rng, true_values, draws, failed=None) -> np.ndarray:
    """SBC ranks in ``0..L`` with random tie-breaking.

    ``true_values`` (S,), ``draws`` (S, L). ``rank_s = #{l: draw_sl < true_s} + U_s`` where
    ``U_s`` is uniform on ``0..#{l: draw_sl == true_s}``. Returns int64 (S,); replicates marked
    ``failed`` get -1 (their values may be NaN). The random stream is drawn for every row, a
    failed one as if all its draws tied, so the ranks of the others do not depend on what a
    failed row held.
    """
    t = as_array("true_values", true_values, ndim=1, finite=False)
    d = as_array("draws", draws, ndim=2, finite=False)
    if d.shape[0] != t.shape[0]:
        raise ValueError(f"draws has {d.shape[0]} replicates but true_values has {t.shape[0]}")
    f = _failed_mask(failed, t.shape[0])
    as_array("true_values", t, failed=f)
    as_array("draws", d, failed=f)
    rng = _as_rng(key_or_rng)
    with np.errstate(invalid="ignore"):
        less = np.where(f, 0, np.sum(d < t[:, None], axis=1))
        ties = np.where(f, d.shape[1], np.sum(d == t[:, None], axis=1))
    ranks = (less + rng.integers(0, ties + 1)).astype(np.int64)
    ranks[f] = -1
    return ranks


def rank_quantities(key_or_rng, true: dict, draws: dict, failed=None) -> tuple[list[str], np.ndarray]:
    """Rank several test quantities. ``true[name]`` (S,), ``draws[name]`` (S, L).

    Returns (names in the order of ``true``, ranks (S, Q) int64; -1 in ``failed`` rows)."""
    if not true:
        raise ValueError("true is empty: at least one test quantity is needed")
    missing = [k for k in true if k not in draws]
    if missing:
        raise ValueError(f"draws is missing the quantities {missing}")
    rng = _as_rng(key_or_rng)
    names = list(true)
    shapes = {np.shape(draws[k]) for k in names}
    if len(shapes) != 1:
        raise ValueError(f"draws: all quantities must have the same (S, L) shape, got {sorted(shapes)}")
    cols = []
    for k in names:
        try:
            cols.append(compute_ranks(rng, true[k], draws[k], failed=failed))
        except ValueError as exc:
            raise ValueError(f"quantity {k!r}: {exc}") from None
    return names, np.stack(cols, axis=1)


# --------------------------------------------------------------------------- uniformity tests


class UniformityTest(NamedTuple):
    statistic: float
    p_value: float


def _check_ranks(ranks, num_ranks: int) -> np.ndarray:
    r = as_array("ranks", ranks)
    if not isinstance(num_ranks, (int, np.integer)) or num_ranks < 1:
        raise ValueError(f"num_ranks (L, the number of draws ranked against) must be a positive integer, got {num_ranks!r}")
    if np.any(r != np.round(r)) or np.any(r < 0) or np.any(r > num_ranks):
        raise ValueError(f"ranks must be integers in 0..{num_ranks} (num_ranks = L)")
    return r.astype(np.int64)


def chi2_bins(num_ranks: int, n_replicates: int, min_expected: float = 5.0, max_bins: int = 50) -> int:
    """Number of chi-square bins: the largest divisor of ``L + 1`` (so that every bin holds the
    same number of rank values) with at least ``min_expected`` expected counts and at most
    ``max_bins`` bins; at least 2 where possible."""
    n_vals = num_ranks + 1
    best = 1
    for b in range(1, min(n_vals, max_bins) + 1):
        if n_vals % b == 0 and n_replicates / b >= min_expected:
            best = b
    if best == 1:
        raise ValueError(
            f"cannot bin {n_replicates} ranks over 0..{num_ranks} with >= {min_expected} expected per bin: "
            "use more replicates or an L+1 with small divisors"
        )
    return best


def chi2_uniformity(ranks, num_ranks: int, n_bins: int | None = None) -> UniformityTest:
    """Pearson chi-square test of uniform ranks on ``0..L`` (``L = num_ranks``), binned into
    ``n_bins`` equal groups of rank values (``n_bins`` must divide ``L + 1``)."""
    r = _check_ranks(ranks, num_ranks).ravel()
    if n_bins is None:
        n_bins = chi2_bins(num_ranks, r.size)
    if (num_ranks + 1) % n_bins != 0 or n_bins < 2:
        raise ValueError(f"n_bins={n_bins} must be >= 2 and divide L + 1 = {num_ranks + 1}")
    per_bin = (num_ranks + 1) // n_bins
    counts = np.bincount(r // per_bin, minlength=n_bins)
    res = stats.chisquare(counts)
    return UniformityTest(float(res.statistic), float(res.pvalue))


def ecdf_eval_points(num_ranks: int, n_eval: int | None = None) -> np.ndarray:
    """Interior ECDF evaluation points ``z = i / (L + 1)`` on rank-cell boundaries.

    With ``n_eval = K`` (default ``min(L + 1, 100)``) intervals, the ``K - 1`` points
    ``round(j (L+1) / K) / (L+1)``, ``j = 1..K-1``. Under uniformity ``P(rank < i) = i/(L+1)``
    exactly, so the discrete rank ECDF at these points behaves as a continuous uniform one."""
    n_vals = num_ranks + 1
    k = min(n_vals, 100) if n_eval is None else int(n_eval)
    if k < 2 or k > n_vals:
        raise ValueError(f"n_eval must be in 2..L+1 = {n_vals}, got {n_eval!r}")
    idx = np.unique(np.round(np.arange(1, k) * n_vals / k).astype(np.int64))
    idx = idx[(idx > 0) & (idx < n_vals)]
    return idx / n_vals


def _pointwise_pvalues(counts: np.ndarray, n: int, z: np.ndarray) -> np.ndarray:
    """Two-sided binomial p-value ``2 min(F(c), 1 - F(c-1))`` of ECDF counts ``c`` at ``z``."""
    cdf = stats.binom.cdf(counts, n, z)
    sf = stats.binom.sf(counts - 1, n, z)
    return np.minimum(1.0, 2.0 * np.minimum(cdf, sf))


def ecdf_gamma_statistic(ranks, num_ranks: int, n_eval: int | None = None) -> float:
    """Säilynoja et al. (2022) statistic: the smallest pointwise two-sided binomial p-value of the
    rank ECDF over the evaluation points (small = far from uniform)."""
    r = _check_ranks(ranks, num_ranks).ravel()
    z = ecdf_eval_points(num_ranks, n_eval)
    cells = np.round(z * (num_ranks + 1)).astype(np.int64)
    counts = np.searchsorted(np.sort(r), cells, side="left")  # #{rank < i} = #{rank <= i-1}
    return float(np.min(_pointwise_pvalues(counts, r.size, z)))


@functools.lru_cache(maxsize=64)
def _count_grid(n: int, z_key: tuple) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(z_key)
    c = np.arange(n + 1)
    return z, _pointwise_pvalues(c[None, :], n, z[:, None])  # (K-1, n+1)


def _intervals(n: int, z_key: tuple, gamma: float, strict: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per evaluation point, the counts whose pointwise p-value is >= gamma (> if strict):
    an interval [lo, hi] because the p-value is unimodal in the count."""
    _, pv = _count_grid(n, z_key)
    # Relative slack of 1e-9: the same p-value computed in a different array layout can differ in
    # the last bits, and ties in Γ are common (counts are discrete).
    ok = pv > gamma * (1 + 1e-9) if strict else pv >= gamma * (1 - 1e-9)
    any_ok = ok.any(axis=1)
    lo = np.where(any_ok, np.argmax(ok, axis=1), n + 1)
    hi = np.where(any_ok, n - np.argmax(ok[:, ::-1], axis=1), -1)
    return lo, hi


def _prob_inside(n: int, z: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Exact P(lo_j <= #{U_i <= z_j} <= hi_j for all j) for n iid Uniform(0,1).

    Recursion over the evaluation points: given c samples below z_{j-1}, the number in
    (z_{j-1}, z_j] is Binomial(n - c, (z_j - z_{j-1}) / (1 - z_{j-1})). Only counts inside the
    band are tracked, so the cost is about K * width^2 with width ~ a few sqrt(n)."""
    prev_lo, prob = 0, np.array([1.0])
    prev_z = 0.0
    for zj, a, b in zip(z, lo, hi):
        if a > b:
            return 0.0
        p = (zj - prev_z) / (1.0 - prev_z)
        c_prev = np.arange(prev_lo, prev_lo + prob.size)
        c_new = np.arange(a, b + 1)
        trans = stats.binom.pmf(c_new[None, :] - c_prev[:, None], n - c_prev[:, None], p)
        prob = prob @ trans
        prev_lo, prev_z = a, zj
        if not prob.any():
            return 0.0
    return float(prob.sum())


def ecdf_uniformity(ranks, num_ranks: int, n_eval: int | None = None) -> UniformityTest:
    """Säilynoja et al. (2022) ECDF test of uniform ranks on ``0..L``.

    Statistic: :func:`ecdf_gamma_statistic`. p-value: ``P(Γ <= Γ_obs)`` under uniformity, computed
    exactly (no Monte Carlo) by :func:`_prob_inside`; when ``K Γ_obs < 1e-10`` the conservative
    union bound ``K Γ_obs`` is returned instead (``K`` evaluation points). Rejecting when ``p <= alpha`` is the same as
    the ECDF leaving the simultaneous ``1 - alpha`` band of :func:`ecdf_simultaneous_band`."""
    r = _check_ranks(ranks, num_ranks).ravel()
    g = ecdf_gamma_statistic(r, num_ranks, n_eval)
    z = ecdf_eval_points(num_ranks, n_eval)
    bonferroni = z.size * g  # P(Γ <= g) <= sum_j P(p_j <= g) <= K g
    if bonferroni < 1e-10:
        # Far in the tail 1 - P(inside) has no accurate digits left (and the recursion is slow
        # because the band is wide): return the conservative union bound instead.
        return UniformityTest(g, float(bonferroni))
    key = tuple(np.round(z, 15))
    lo, hi = _intervals(r.size, key, g, strict=True)
    p = 1.0 - _prob_inside(r.size, z, lo, hi)
    return UniformityTest(g, float(min(1.0, max(p, 0.0))))


def uniformity_tests(ranks, num_ranks: int, n_bins: int | None = None, n_eval: int | None = None,
                     failed=None) -> dict:
    """Both tests for each quantity. ``ranks`` (S,) or (S, Q). Returns dict of (Q,) arrays:
    ``chi2``, ``chi2_p``, ``ecdf_gamma``, ``ecdf_p``, ``chi2_defined``, and ``n_replicates`` /
    ``n_failed``: the replicates tested and those left out.

    Replicates marked ``failed`` ((S,) bool) are left out (their ranks may be -1). With too few
    replicates for >= 5 expected counts in 2 or more bins the chi-square test is undefined:
    ``chi2`` and ``chi2_p`` are then NaN (``chi2_defined`` False), never a guess; the ECDF test,
    exact for any S, is always computed."""
    r = np.asarray(ranks)
    if r.ndim == 1:
        r = r[:, None]
    if r.ndim != 2:
        raise ValueError(f"ranks must be (S,) or (S, Q), got shape {np.shape(ranks)}")
    f = _failed_mask(failed, r.shape[0])
    if f.all():
        raise ValueError(f"failed: all {f.size} replicates failed; no ranks to test")
    r = _check_ranks(r[~f], num_ranks)
    out = {k: np.empty(r.shape[1]) for k in ("chi2", "chi2_p", "ecdf_gamma", "ecdf_p")}
    try:
        bins = chi2_bins(num_ranks, r.shape[0]) if n_bins is None else n_bins
    except ValueError:
        bins = None
    out["chi2_defined"] = np.full(r.shape[1], bins is not None)
    out["n_replicates"] = np.full(r.shape[1], r.shape[0], dtype=np.int64)
    out["n_failed"] = np.full(r.shape[1], int(f.sum()), dtype=np.int64)
    for q in range(r.shape[1]):
        c = chi2_uniformity(r[:, q], num_ranks, bins) if bins is not None else (np.nan, np.nan)
        e = ecdf_uniformity(r[:, q], num_ranks, n_eval)
        out["chi2"][q], out["chi2_p"][q] = c
        out["ecdf_gamma"][q], out["ecdf_p"][q] = e
    return out


# --------------------------------------------------------------------------- simultaneous band


class EcdfBand(NamedTuple):
    """Simultaneous band for the ECDF of ``n_ranks`` uniform ranks on ``0..L``.

    ``z`` (K-1,) evaluation points; ``lower``/``upper`` ECDF band (fractions); ``lower_diff``/
    ``upper_diff`` the same minus ``z`` (ECDF-difference plot); ``gamma`` the adjusted pointwise
    level; ``coverage`` the band's simultaneous coverage (exact for 'optimize')."""

    z: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    lower_diff: np.ndarray
    upper_diff: np.ndarray
    gamma: float
    alpha: float
    coverage: float


@functools.lru_cache(maxsize=128)
def _band_cached(n: int, num_ranks: int, alpha: float, method: str, n_eval, n_sim: int, seed: int) -> EcdfBand:
    z = ecdf_eval_points(num_ranks, n_eval)
    key = tuple(np.round(z, 15))
    if method == "optimize":
        # coverage(γ) = P(all pointwise p-values >= γ) is non-increasing in γ: bisect on log γ for
        # the largest γ with coverage >= 1 - alpha.
        def cov(g):
            lo, hi = _intervals(n, key, g, strict=False)
            return _prob_inside(n, z, lo, hi)

        a, b = np.log(1e-12), np.log(alpha)  # cov(alpha) <= 1-alpha (pointwise band), cov(tiny) ~ 1
        if cov(np.exp(b)) >= 1 - alpha:
            a = b
        for _ in range(60):
            m = 0.5 * (a + b)
            if cov(np.exp(m)) >= 1 - alpha:
                a = m
            else:
                b = m
            if b - a < 1e-4:
                break
        gamma = float(np.exp(a))
        coverage = cov(gamma)
    elif method == "simulate":
        rng = np.random.default_rng(seed)
        cells = np.round(z * (num_ranks + 1)).astype(np.int64)
        gam = np.empty(n_sim)
        for i in range(n_sim):
            r = np.sort(rng.integers(0, num_ranks + 1, size=n))
            counts = np.searchsorted(r, cells, side="left")
            gam[i] = np.min(_pointwise_pvalues(counts, n, z))
        # largest γ with P(Γ >= γ) >= 1 - alpha: the alpha-quantile of Γ (lower side).
        gamma = float(np.quantile(gam, alpha, method="lower"))
        coverage = float(np.mean(gam >= gamma))
    else:
        raise ValueError(f"method must be 'optimize' or 'simulate', got {method!r}")
    lo, hi = _intervals(n, key, gamma, strict=False)
    lower, upper = lo / n, hi / n
    return EcdfBand(z, lower, upper, lower - z, upper - z, gamma, float(alpha), float(coverage))


def ecdf_simultaneous_band(
    n_ranks: int,
    num_ranks: int,
    alpha: float = 0.05,
    method: str = "optimize",
    n_eval: int | None = None,
    n_sim: int = 5000,
    seed: int = 0,
) -> EcdfBand:
    """Simultaneous ``1 - alpha`` band for the ECDF of ``n_ranks`` (= S) ranks on ``0..L``
    (``L = num_ranks``), Säilynoja, Bürkner & Vehtari (2022).

    The pointwise binomial band at level ``gamma`` is widened (``gamma`` lowered) until the whole
    ECDF stays inside with probability ``1 - alpha``. ``method='optimize'`` computes that
    probability exactly and bisects on ``gamma``; ``'simulate'`` uses ``n_sim`` seeded uniform
    rank sets. Cached on all arguments."""
    if not isinstance(n_ranks, (int, np.integer)) or n_ranks < 1:
        raise ValueError(f"n_ranks must be a positive integer, got {n_ranks!r}")
    if not isinstance(num_ranks, (int, np.integer)) or num_ranks < 1:
        raise ValueError(f"num_ranks must be a positive integer, got {num_ranks!r}")
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if method not in ("optimize", "simulate"):
        raise ValueError(f"method must be 'optimize' or 'simulate', got {method!r}")
    if n_sim < 100:
        raise ValueError(f"n_sim must be >= 100, got {n_sim!r}")
    return _band_cached(int(n_ranks), int(num_ranks), float(alpha), method, n_eval, int(n_sim), int(seed))


# --------------------------------------------------------------------------- z-score, contraction


def posterior_mean_sd(draws, failed=None) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and sd per replicate over all non-leading axes of ``draws`` (S, ...);
    NaN for replicates marked ``failed``."""
    d = as_array("draws", draws, finite=False)
    if d.ndim < 2:
        raise ValueError(f"draws must be (S, ...) with at least one draw axis, got shape {d.shape}")
    f = _failed_mask(failed, d.shape[0])
    as_array("draws", d, failed=f)
    flat = np.where(f[:, None], 0.0, d.reshape(d.shape[0], -1))
    if flat.shape[1] < 2:
        raise ValueError("draws: at least 2 draws per replicate are needed for a posterior sd")
    mean, sd = flat.mean(axis=1), flat.std(axis=1, ddof=1)
    return np.where(f, np.nan, mean), np.where(f, np.nan, sd)


def zscore_contraction(true_values, draws, prior_var, failed=None) -> tuple[np.ndarray, np.ndarray]:
    """Posterior z-score ``(mean - true) / sd`` and contraction ``1 - post_var / prior_var``
    (Schad, Betancourt & Vasishth 2021). ``true_values`` (S,), ``draws`` (S, ...),
    ``prior_var`` scalar or (S,) > 0. Replicates marked ``failed`` get NaN; a zero posterior sd
    (all draws equal) in another replicate raises, naming it (mark it failed: see
    :func:`replicate_problems`)."""
    t = as_array("true_values", true_values, ndim=1, finite=False)
    mean, sd = posterior_mean_sd(draws, failed=failed)
    if mean.shape != t.shape:
        raise ValueError(f"draws has {mean.shape[0]} replicates but true_values has {t.shape[0]}")
    f = _failed_mask(failed, t.shape[0])
    as_array("true_values", t, failed=f)
    pv = as_array("prior_var", prior_var)
    if np.any(pv <= 0):
        raise ValueError("prior_var must be > 0")
    zero = (sd == 0) & ~f
    if np.any(zero):
        raise ValueError(f"draws: {int(zero.sum())} replicate(s) have zero posterior sd (constant draws; first: "
                         f"replicate {int(np.argmax(zero))}); mark them failed")
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(f, np.nan, (mean - np.where(f, 0.0, t)) / np.where(f, 1.0, sd))
        c = np.where(f, np.nan, 1.0 - sd**2 / pv)
    return z, c
