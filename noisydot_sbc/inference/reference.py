"""Discrepancy of a fitted posterior (draws) to the exact one (a quadrature posterior), per replicate.

For each replicate and parameter, on the log scale of |σ| (where both noise levels are
location-like and the quadrature's marginal CDF lives):

- ``w1_log``: Wasserstein-1 distance ∫ |F_fit(t) − F_exact(t)| dt between the empirical CDF of the
  fitted draws and the exact marginal CDF (nonparametric; it has a Monte Carlo floor of order
  sd / √L for L draws).
- ``kl_log``: KL(exact ‖ fit) between the normal moment matches of the two log-scale marginals,
  log(s_f/s_e) + (s_e² + (m_e − m_f)²)/(2 s_f²) − ½ (a density estimate of the draws would
  bias a nonparametric KL by its bandwidth; the moment form has no such bias).
- ``median_shift``: (median of the draws − exact median) / exact sd.
- ``sd_ratio``: sd of the draws / exact sd.

Arrays are (S, P) with P in the order of ``params`` (:data:`noisydot_sbc.models.PARAMS`); NaN where
the fit or the reference failed for that replicate (kept as data, never dropped).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .quadrature import QuadratureResult, cdf_quantiles

__all__ = ["Discrepancy", "METRICS", "reference_discrepancy", "discrepancy_from_cdf"]

METRICS = ("w1_log", "kl_log", "median_shift", "sd_ratio")


class Discrepancy(NamedTuple):
    params: tuple
    w1_log: np.ndarray       # (S, P)
    kl_log: np.ndarray       # (S, P)
    median_shift: np.ndarray  # (S, P)
    sd_ratio: np.ndarray     # (S, P)

    def as_dict(self) -> dict:
        """``{metric}_{param}`` -> (S,) arrays (flat names for storage)."""
        return {f"{m}_{p}": getattr(self, m)[:, k] for m in METRICS for k, p in enumerate(self.params)}


def discrepancy_from_cdf(draws, edges, cdf, mean, sd):
    """Discrepancy of 1-D draws (log scale) to an exact marginal given by its CDF at ``edges`` (piecewise
    linear between), its mean and sd. Returns (w1, kl, median_shift, sd_ratio)."""
    d = np.sort(np.asarray(draws, float))
    d = d[np.isfinite(d)]
    edges = np.asarray(edges, float)
    cdf = np.asarray(cdf, float)
    if d.size < 2 or not (np.all(np.isfinite(edges)) and np.all(np.isfinite(cdf))) or not sd > 0:
        return (np.nan,) * 4
    # W1 = ∫ |F_fit − F_exact| dt on the union of the exact edges and the draws (both CDFs are
    # piecewise linear / piecewise constant there, integrated exactly on each piece by the midpoint
    # of F_fit and the trapezoid of F_exact, refined by 4 sub-points per piece)
    t = np.union1d(edges, d)
    sub = np.linspace(0.0, 1.0, 5)
    lo, hi = t[:-1], t[1:]
    pts = lo[:, None] + (hi - lo)[:, None] * sub[None, :]
    f_exact = np.interp(pts, edges, cdf, left=0.0, right=1.0)
    mid = 0.5 * (lo + hi)
    f_fit = np.searchsorted(d, mid, side="right") / d.size
    gap = np.abs(f_fit[:, None] - f_exact)
    w1 = float(np.sum((hi - lo) * np.trapezoid(gap, sub, axis=1)))
    m_f, s_f = float(np.mean(d)), float(np.std(d, ddof=1))
    kl = float(np.log(s_f / sd) + (sd**2 + (mean - m_f) ** 2) / (2 * s_f**2) - 0.5) if s_f > 0 else np.inf
    med_exact = float(cdf_quantiles(edges, cdf, [0.5])[0])
    shift = (float(np.median(d)) - med_exact) / sd
    return w1, kl, shift, s_f / sd


def reference_discrepancy(draws: dict, exact: QuadratureResult, failed=None) -> Discrepancy:
    """Per-replicate discrepancy of ``draws`` (site -> (S, chain, draw) or (S, draw)) to ``exact``
    (the quadrature posterior of the exact model for the same data). ``failed`` (S,) marks fits
    to leave NaN."""
    params = tuple(exact.params)
    S = exact.log_marginal_likelihood.shape[0]
    out = {m: np.full((S, len(params)), np.nan) for m in METRICS}
    for k, p in enumerate(params):
        if p not in draws:
            raise ValueError(f"draws has no site {p!r}; it has {sorted(draws)}")
        a = np.asarray(draws[p], float)
        if a.shape[0] != S:
            raise ValueError(f"draws[{p!r}] has {a.shape[0]} replicates, the reference {S}")
        a = a.reshape(S, -1)
        edges, cdf = exact.marginals[p]
        mean, sd = exact.moments[p]["log_mean"], exact.moments[p]["log_sd"]
        for s in range(S):
            if exact.failed[s] or (failed is not None and failed[s]):
                continue
            vals = discrepancy_from_cdf(np.log(np.abs(a[s])), edges[s], cdf[s], mean[s], sd[s])
            for m, v in zip(METRICS, vals):
                out[m][s, k] = v
    return Discrepancy(params, **out)
