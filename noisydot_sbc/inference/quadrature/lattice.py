"""The lattice the posterior is integrated on: the smooth half-axis warp and the frame
z = m + C warp(v) (:class:`Frame`), the half-axis extents that set the warp, the node values of a
batch of replicates (:class:`Lattice`), evaluation at its nodes, the walk outwards from the mode
(:func:`walk`) and the stencil Newton that polishes the mode and the whitening on the model's own
likelihood (:func:`stencil_newton`)."""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


# ---------------------------------------------------------------------------------------------
# the warped, whitened frame and the half-axis extents
# ---------------------------------------------------------------------------------------------

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


def stretch(t_star, r):
    """Coefficient with warp(r) = t_star (t_star >= r) on one half-axis."""
    v0 = WARP_START
    return max(t_star - r, 0.0) / (_softplus(r - v0) - _softplus(-v0))


class Frame(NamedTuple):
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


def half_axis_scales(ev, rep_idx, m, C, prior_lp, D, top, n_eval, max_nodes, rounds=5):
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

class Lattice:
    """Node values of one batch of replicates on the lattice u = h·(i − R, j − R).

    The arrays cover |i − R|, |j − R| <= R nodes; they start small and :meth:`grow` when the walk
    reaches their edge, up to ``R_max`` (``max_radius`` / h): a lattice sized to the whole radius
    scanned (B, G, G) arrays of up to 641² nodes per replicate in every walk round after three
    halvings, where the posterior covers a few thousand (measured: 20 % of a fit's time at N = 200,
    M = 8). R stays a multiple of ``align`` (the largest exact stride), so every sublattice of the
    corrected lattice meets the edge at a node and a pending node's sublattice corners lie inside."""

    def __init__(self, B, h, R, k=None, R_max=None, align=2):
        self.h = h
        self.k = None if k is None else np.asarray(k, np.int64)
        k_max = int(self.k.max()) if self.k is not None and self.k.size else 1
        self.align = max(int(align), 2, k_max)
        self.R_max = _round_up(R if R_max is None else R_max, self.align)
        self.R = min(_round_up(R, self.align), self.R_max)
        G = 2 * self.R + 1
        self.val = np.full((B, G, G), np.nan)
        self.err = np.zeros((B, G, G))
        # the corrected lattice (exact likelihood on the stride-k sublattice, k (B,)): exact and
        # approximate total log-likelihoods and the log prior per node (NaN: not evaluated)
        if self.k is not None:
            self.ll = np.full((B, G, G), np.nan)
            self.gl = np.full((B, G, G), np.nan)
            self.lp = np.full((B, G, G), np.nan)

    def _names(self):
        return ("val", "err") + (("ll", "gl", "lp") if self.k is not None else ())

    def grow(self, pad=None):
        """Widen the arrays by ``pad`` nodes on every side (default: half their radius, at least 4;
        rounded up to ``align``, at most up to ``R_max``); node (i, j) becomes (i + pad, j + pad).
        Returns whether it grew."""
        pad = max(4, self.R // 2) if pad is None else pad
        pad = min(_round_up(pad, self.align), self.R_max - self.R)
        if pad <= 0:
            return False
        for name in self._names():
            old = getattr(self, name)
            new = np.full((old.shape[0],) + (old.shape[1] + 2 * pad,) * 2, 0.0 if name == "err" else np.nan)
            new[:, pad:-pad, pad:-pad] = old
            setattr(self, name, new)
        self.R += pad
        return True

    def extent(self, rows=None):
        """The largest |i − R| or |j − R| of a known node (over the replicates ``rows``; 0 if none)."""
        known = ~np.isnan(self.val if rows is None else self.val[rows])
        idx = np.nonzero(known.any(axis=(0, 2)))[0]
        jdx = np.nonzero(known.any(axis=(0, 1)))[0]
        if idx.size == 0:
            return 0
        return int(max(abs(idx[0] - self.R), abs(idx[-1] - self.R), abs(jdx[0] - self.R), abs(jdx[-1] - self.R)))

    def refined(self, sel, k_new, margin=8):
        """The lattice of half the step for the replicates ``sel``: old node (i, j) -> (2i, 2j)
        relative to the centre, sized to the known nodes plus ``margin`` new nodes (it grows if
        the walk needs more)."""
        ext = self.extent(sel)
        new = Lattice(int(np.sum(sel)), self.h / 2, 2 * ext + margin, None if self.k is None else k_new,
                      R_max=2 * self.R_max, align=self.align)
        lo, hi = self.R - ext, self.R + ext + 1
        nlo, nhi = new.R - 2 * ext, new.R + 2 * ext + 1
        for name in self._names():
            getattr(new, name)[:, nlo:nhi:2, nlo:nhi:2] = getattr(self, name)[sel][:, lo:hi, lo:hi]
        return new

    @property
    def G(self):
        return 2 * self.R + 1

    def v(self, i, j):
        return self.h * np.stack([i - self.R, j - self.R], axis=-1)


def _round_up(n, m):
    return int(-(-int(n) // m) * m)


def dilate8(mask):
    """(B, G, G) bool: the nodes of ``mask`` and their 8-neighbours, per replicate (a 3×3 box
    dilation as two shifted ORs per axis: what ``ndimage.binary_dilation`` with a (1, 3, 3)
    structure computes, ~10x faster on these arrays, where the walk spends one per round)."""
    rows = mask.copy()
    rows[:, 1:, :] |= mask[:, :-1, :]
    rows[:, :-1, :] |= mask[:, 1:, :]
    out = rows.copy()
    out[:, :, 1:] |= rows[:, :, :-1]
    out[:, :, :-1] |= rows[:, :, 1:]
    return out


def at_nodes(ev, rep_idx, lat, mask, frames, prior_lp):
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


def finite_or(a, fill):
    """a NaN or infinite value is no mass (log density -inf) or an unknown error (+inf), never a
    silent NaN downstream"""
    return np.where(np.isfinite(a), a, fill)


def evaluate_nodes(ev, rep_idx, lat, pending, frames, prior_lp, n_eval):
    """Evaluate the model's log posterior at the pending nodes (B, G, G)."""
    for b, i, j, ll, err, lp in at_nodes(ev, rep_idx, lat, pending, frames, prior_lp):
        lat.val[b, i, j] = finite_or(ll + lp, -np.inf)
        lat.err[b, i, j] = finite_or(err, np.inf)
        n_eval[b] += i.size


def walk(evaluate, lat, D, max_nodes, n_eval, first, trim=True):
    """Flood the lattice outwards from what is known (first from the disk |u|²/2 < D as well):
    evaluate every unknown 8-neighbour of a node within D of the top, round by round.
    ``evaluate(lat, pending, n_eval)`` fills the pending nodes; with ``trim`` a round that would
    exceed a replicate's node budget keeps the nodes nearest the centre (for the corrected
    lattice, whose pending nodes are not all exact evaluations, the walk stops once the budget is
    spent instead). Returns capped (B,) bool: the walk reached the lattice edge or ran out of
    node budget."""
    B = lat.val.shape[0]

    def geometry():
        G = lat.G
        ii, jj = np.meshgrid(np.arange(G), np.arange(G), indexing="ij")
        edge = np.zeros((G, G), bool)
        edge[[0, -1], :] = True
        edge[:, [0, -1]] = True
        return ((ii - lat.R) ** 2 + (jj - lat.R) ** 2) * lat.h**2, edge

    rad2, edge = geometry()
    capped = np.zeros(B, bool)
    pending = np.zeros(lat.val.shape, bool)
    if first:
        while (rad2[lat.R, [0, -1]] / 2 < D).any() and lat.grow():  # the disk inside
            rad2, edge = geometry()
        pending = (rad2 / 2 < D)[None] & np.isnan(lat.val)
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
        while True:
            known = ~np.isnan(lat.val)
            top = np.max(np.where(known, lat.val, -np.inf).reshape(B, -1), axis=1)
            inside = known & (lat.val > (top - D)[:, None, None])
            at_edge = (inside & edge).reshape(B, -1).any(1)
            if not at_edge.any() or not lat.grow():
                break
            rad2, edge = geometry()
        capped |= at_edge  # the edge of the largest lattice (max_radius)
        frontier = dilate8(inside) & ~known
        spent = n_eval >= max_nodes
        capped |= frontier.reshape(B, -1).any(1) & spent
        pending = frontier & ~spent[:, None, None]
        if not pending.any():
            return capped


def known_box(known, step, centre):
    """The bounding box of the known nodes of a square grid (index ``centre`` at coordinate 0,
    spacing ``step``): (row slice, column slice, row coordinates, column coordinates)."""
    rows, cols = np.nonzero(known.any(1))[0], np.nonzero(known.any(0))[0]
    ra, ca = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    return ra, ca, (np.arange(ra.start, ra.stop) - centre) * step, (np.arange(ca.start, ca.stop) - centre) * step


# ---------------------------------------------------------------------------------------------
# 2. polish: stencil Newton on the model's own likelihood
# ---------------------------------------------------------------------------------------------

def stencil_newton(ev, rep_idx, m, C, prior_lp, dz, steps, n_eval, max_nodes):
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
        lls[rows] = finite_or(ll, -np.inf).reshape(-1, 3, 3)
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

