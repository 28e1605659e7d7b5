"""The study's power controls: known defects, Holm's adjustment, what a replicate count detects.

One job: how strong a test the study is. :func:`holm_adjust` gives the step-down adjusted
p-values the verdicts are read from. A calibrated posterior made wrong on purpose (a
:class:`Defect` of :data:`DEFECTS`, on the log scale: its spread around the median scaled by 0.8
or 1.25, or its draws shifted by 0.3 posterior sds) gives ranks that are not uniform. The controls
take the posterior shapes from one calibrated exact cell's stored draws
(:func:`control_samplers`; the cell is chosen by ``table.select_control``): a
:class:`DefectSampler` places a calibrated truth at a fresh uniform quantile of a stored posterior
and returns the defective posterior's CDF there, ``u``. A cell with S replicates and L ranks is
mimicked by S such values and a rank ``Binomial(L, u)`` for each (the rank of the truth among L
independent draws), and :func:`detection_power` counts how often the ECDF test rejects at the
study's per-test level ``alpha / (number of tests)`` (Holm's first threshold, the strictest a cell
can meet: a lower bound on the power of the study's test). A rank depends on the posterior only
through ``u``, and ``u`` of a roughly log-normal posterior has the same law whatever the design,
so one control serves every cell. Hand-written because no library runs SBC power on stored
posterior draws.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import sbc

__all__ = ["Defect", "DEFECTS", "NO_DEFECT", "holm_adjust", "DefectSampler", "detection_power", "control_samplers"]


class Defect(NamedTuple):
    """A known miscalibration applied to exact posterior draws on the log scale."""

    name: str
    kind: str  # "scale": spread around the median times ``amount``; "shift": + amount posterior sds
    amount: float


DEFECTS = (
    Defect("width x0.8", "scale", 0.8),
    Defect("width x1.25", "scale", 1.25),
    Defect("median +0.3 sd", "shift", 0.3),
)
NO_DEFECT = Defect("none", "scale", 1.0)  # the control itself: its power is the test's size


def _col(defect_name: str) -> str:
    return defect_name.replace(" ", "_").replace("+", "").replace(".", "")


def holm_adjust(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (same shape as the input; NaN entries stay NaN and do
    not count as tests). Controls the family-wise error rate over all finite entries:
    ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j))`` over the sorted p-values."""
    p = np.asarray(p_values, dtype=float)
    flat = p.ravel()
    ok = np.isfinite(flat)
    if np.any(flat[ok] < 0) or np.any(flat[ok] > 1):
        raise ValueError("p_values must lie in [0, 1]")
    out = np.full(flat.shape, np.nan)
    vals = flat[ok]
    m = vals.size
    if m:
        order = np.argsort(vals, kind="stable")
        adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * vals[order]))
        res = np.empty(m)
        res[order] = adj
        out[ok] = res
    return out.reshape(p.shape)


class DefectSampler:
    """Draws the CDF at the truth, ``u``, of defective posteriors shaped like stored ones.

    ``draws_log`` (S, D): log-scale posterior draws of one parameter in S replicates of a cell.
    A call ``sampler(rng, n)`` picks n replicates (with replacement), places a calibrated truth
    in each at a fresh uniform quantile U (``t = Q_s(U)``, the linear-interpolation quantile of
    the replicate's draws) and returns the CDF at ``t`` of the replicate's posterior made wrong by
    ``defect`` (``scale``: draws ``med + amount (d - med)``; ``shift``: draws ``d + amount sd``),
    read from the same interpolated CDF, so that without a defect ``u == U`` exactly. Fresh U per
    pick keeps repeated replicates from giving repeated ranks (resampling the S stored ranks
    themselves would inflate the test's size; measured 0.06 instead of 0.0008 at S = 1000)."""

    def __init__(self, draws_log, defect: Defect):
        d = np.asarray(draws_log, dtype=float)
        if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] < 2:
            raise ValueError(f"draws_log must be (S, D) with D >= 2 draws per replicate, got shape {d.shape}")
        if not np.isfinite(d).all():
            raise ValueError("draws_log must be finite (leave failed replicates out)")
        if defect.kind not in ("scale", "shift"):
            raise ValueError(f"defect.kind must be 'scale' or 'shift', got {defect.kind!r}")
        if defect.kind == "scale" and defect.amount <= 0:
            raise ValueError(f"defect.amount must be > 0 for a scale defect, got {defect.amount}")
        self.draws = np.sort(d, axis=1)
        self.median = np.median(d, axis=1)
        self.sd = d.std(axis=1, ddof=1)
        self.defect = defect

    def __call__(self, rng: np.random.Generator, n: int) -> np.ndarray:
        S, D = self.draws.shape
        rows = rng.integers(0, S, size=int(n))
        d = self.draws[rows]
        ar = np.arange(d.shape[0])
        pos = rng.random(d.shape[0]) * (D - 1)
        lo = np.minimum(np.floor(pos).astype(np.int64), D - 2)
        t = d[ar, lo] + (pos - lo) * (d[ar, lo + 1] - d[ar, lo])
        # the undefected value whose defective image is t: CDF_defective(t) = CDF(x)
        if self.defect.kind == "scale":
            x = self.median[rows] + (t - self.median[rows]) / self.defect.amount
        else:
            x = t - self.defect.amount * self.sd[rows]
        j = np.clip(np.sum(d <= x[:, None], axis=1), 1, D - 1)  # d[j-1] <= x < d[j] inside the range
        left, right = d[ar, j - 1], d[ar, j]
        width = right - left
        frac = np.where(width > 0, (x - left) / np.where(width > 0, width, 1.0), 0.0)
        return np.clip((j - 1 + frac) / (D - 1), 0.0, 1.0)


def detection_power(rng: np.random.Generator, cdf_sampler, num_ranks: int, n_replicates: int, level: float,
                    n_resamples: int = 200) -> float:
    """Probability that the ECDF test at ``level`` rejects uniformity for ``n_replicates`` ranks
    on ``0..num_ranks`` from posteriors whose CDF at the truth is drawn by ``cdf_sampler(rng, n)``
    (a :class:`DefectSampler`, or any callable returning n values in [0, 1]).

    Each resample draws ``n_replicates`` values u and a rank ``Binomial(num_ranks, u)`` for each
    (the rank of the truth among L independent posterior draws); rejection at ``level`` is the
    ECDF leaving the simultaneous ``1 - level`` band, i.e. the Γ statistic below the band's
    ``gamma`` (:func:`noisydot_sbc.sbc.ecdf_simultaneous_band`), the test of ``sbc.ecdf_uniformity``."""
    if not callable(cdf_sampler):
        raise ValueError(f"cdf_sampler must be callable (rng, n) -> (n,) values in [0, 1], got {cdf_sampler!r}")
    if not isinstance(n_replicates, (int, np.integer)) or n_replicates < 2:
        raise ValueError(f"n_replicates must be an integer >= 2, got {n_replicates!r}")
    if not (0.0 < level < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples!r}")
    gamma = sbc.ecdf_simultaneous_band(int(n_replicates), int(num_ranks), alpha=float(level)).gamma
    hits = 0
    for _ in range(int(n_resamples)):
        u = np.asarray(cdf_sampler(rng, int(n_replicates)), dtype=float)
        if u.shape != (n_replicates,) or not np.all((u >= 0) & (u <= 1)):
            raise ValueError(f"cdf_sampler must return {n_replicates} values in [0, 1], got shape {u.shape}")
        hits += sbc.ecdf_gamma_statistic(rng.binomial(int(num_ranks), u), num_ranks) < gamma
    return hits / n_resamples


def control_samplers(ds, defects=DEFECTS + (NO_DEFECT,)) -> dict:
    """{(defect name, parameter): :class:`DefectSampler`} of every defect on a cell's stored
    draws (``draws`` (replicate, chain, draw, parameter), log of their absolute value). Failed
    replicates are left out."""
    for v in ("draws", "failed"):
        if v not in ds.variables:
            raise ValueError(f"ds is missing the variable {v!r} needed for the power controls")
    ok = ~np.asarray(ds["failed"].values, bool)
    draws = np.asarray(ds["draws"].transpose("replicate", "chain", "draw", "parameter").values)[ok]
    s = draws.shape[0]
    if s < 1:
        raise ValueError("ds has no non-failed replicate to build the power controls from")
    flat = draws.reshape(s, -1, draws.shape[-1])
    out = {}
    for j, p in enumerate(str(v) for v in ds["parameter"].values):
        d = np.log(np.abs(flat[:, :, j]))
        for defect in defects:
            out[(defect.name, p)] = DefectSampler(d, defect)
    return out
