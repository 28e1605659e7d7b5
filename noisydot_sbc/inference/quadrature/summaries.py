"""Summaries of one replicate from its lattice: the bicubic spline of the log density, the fine grid
of cell masses (means, sds, marginal CDFs and quantiles), the log marginal likelihood by the
trapezoid rule, and the error estimate against the sublattice of step 2h (:func:`assess`)."""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.interpolate import PchipInterpolator, RectBivariateSpline
from scipy.special import logsumexp

from .config import PROBS
from .lattice import dilate8, known_box, warp_slope


HELD_OUT_ORDER = 4.0  # 2^2: the held-out interpolation error at 2h over that at h, second order
RICHARDSON = 15.0  # 2^4 - 1: the change between steps 2h and h over the error at h, fourth-order rule


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
    ra, ca, ua, ub = known_box(known, h, R)
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


def _fine_coords(fr, ax):
    """Lattice coordinates (F·F, 2) of the fine cells' centres (row-major over (log σ_x, log σ_w))."""
    Z0, Z1 = np.meshgrid(ax[0], ax[1], indexing="ij")
    return fr.v(np.stack([Z0, Z1], -1).reshape(-1, 2))


MASS_DROP = 6.0  # fine cells are evaluated near lattice nodes within D + MASS_DROP of the top only


def _fine_keep(val, h, R, u, D):
    """(F·F,) bool: the fine cells whose nearest lattice node, or one of its 8 neighbours, has a log
    density within D + MASS_DROP of the top. Elsewhere the spline runs below top − D − MASS_DROP
    (the walk stopped there; unknown nodes are filled lower still), so those cells together hold
    less than F²·e^−18 of the top cell's mass, and evaluating them was a third of the time the
    summaries took on elongated posteriors, whose box in (log σ_x, log σ_w) is mostly empty."""
    known = np.isfinite(val)
    near = np.zeros(val.shape, bool)
    near[known] = val[known] > np.max(val[known]) - D - MASS_DROP
    near = dilate8(near[None])[0]
    idx = np.rint(u / h).astype(np.int64) + R
    ok = ((idx >= 0) & (idx < val.shape[0])).all(1)
    keep = np.zeros(u.shape[0], bool)
    keep[ok] = near[idx[ok, 0], idx[ok, 1]]
    return keep


def _fine_logmass(spl, ubox, u, ax, width, keep=None):
    """Log cell masses (F, F) of the fine grid from the spline ``spl`` at the cells' lattice
    coordinates ``u`` (from :func:`_fine_coords`; -inf outside the spline's box ``ubox`` and
    outside ``keep``, from :func:`_fine_keep`)."""
    inb = (u[:, 0] >= ubox[0][0]) & (u[:, 0] <= ubox[0][1]) & (u[:, 1] >= ubox[1][0]) & (u[:, 1] <= ubox[1][1])
    if keep is not None:
        inb &= keep
    out = np.full(u.shape[0], -np.inf)
    if inb.any():
        out[inb] = spl.ev(u[inb, 0], u[inb, 1])
    return out.reshape(ax[0].size, ax[1].size) + np.log(width[0] * width[1])


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


def assess(val, err, h, R, fr, D, F):
    """Summaries of the full lattice, error estimate vs its sublattice of step 2h."""
    ax, width = _fine_box(val, h, R, fr, D, F)
    spl, ubox = _spline_logdens(val, h, R, D)
    u = _fine_coords(fr, ax)  # the full and the coarse spline are evaluated at the same cells
    keep = _fine_keep(val, h, R, u, D)
    lm_full = _fine_logmass(spl, ubox, u, ax, width, keep)
    full = _summaries(lm_full, ax, width)
    # sublattice: every other node (the centre is node (R, R), so R must be kept even-aligned)
    sub = val[R % 2::2, R % 2::2]
    Rs = R // 2
    log_z = _log_mass(val, h, R, fr)
    try:
        spl2, ubox2 = _spline_logdens(sub, 2 * h, Rs, D)
        coarse = _summaries(_fine_logmass(spl2, ubox2, u, ax, width, keep), ax, width)
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

