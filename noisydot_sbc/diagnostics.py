"""Per-replicate MCMC diagnostics from (S, chain, draw) arrays.

Inputs follow the engine's ``FitResult`` contract: ``samples[site]`` and ``sample_stats[name]``
are numpy arrays shaped (S, chain, draw), with ArviZ names for the statistics ("diverging",
"tree_depth", "n_steps", "acceptance_rate", "step_size", "energy", "lp").

R-hat (rank-normalised split R-hat) and bulk/tail ESS come from ArviZ (``arviz.rhat`` /
``arviz.ess`` on (chain, draw) arrays, Vehtari et al. 2021), looped over replicates. With a single
chain ArviZ refuses R-hat, so the chain is cut into two halves first (R-hat of the two halves,
each split again by ArviZ); that still detects drift within the chain.

E-BFMI per chain (Betancourt 2016): ``sum_t (E_t - E_{t-1})^2 / sum_t (E_t - mean E)^2``,
the same formula as ``arviz.bfmi``.

Replicates marked ``failed`` get NaN for every float diagnostic and -1 for every count;
NaN R-hat/ESS elsewhere means the diagnostic is undefined (e.g. constant draws) — see
``n_undefined`` in the result.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np

__all__ = ["ebfmi", "rhat_ess", "compute_diagnostics", "wall_time_share", "summary_table"]


def _arr3(name: str, value, allow_nan: bool = False) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (S, chain, draw), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not allow_nan and np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values; mark those replicates as failed")
    return arr


def ebfmi(energy) -> np.ndarray:
    """E-BFMI per chain: (S, chain, draw) energy -> (S, chain). Values < 0.3 flag poor
    momentum resampling (heavy-tailed energy transitions)."""
    e = _arr3("energy", energy, allow_nan=True).astype(float)
    if e.shape[2] < 2:
        raise ValueError("energy needs at least 2 draws per chain")
    num = np.sum(np.diff(e, axis=2) ** 2, axis=2)
    den = np.sum((e - e.mean(axis=2, keepdims=True)) ** 2, axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def rhat_ess(draws, skip=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank-normalised split R-hat, bulk ESS and tail ESS per replicate from (S, chain, draw).

    ``skip`` (S,) bool: replicates to leave as NaN (failed fits). Returns three (S,) arrays."""
    import arviz as az

    d = _arr3("draws", draws, allow_nan=True).astype(float)
    s, c, n = d.shape
    if n < 4:
        raise ValueError(f"draws needs at least 4 draws per chain for R-hat/ESS, got {n}")
    skip = np.zeros(s, bool) if skip is None else np.asarray(skip, bool)
    rhat, bulk, tail = (np.full(s, np.nan) for _ in range(3))
    az_logger = logging.getLogger("arviz")
    old = az_logger.level
    az_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            for i in range(s):
                if skip[i]:
                    continue
                x = d[i]
                if not np.all(np.isfinite(x)):
                    raise ValueError(f"draws for replicate {i} contain non-finite values; mark it as failed")
                xr = x if c > 1 else x[:, : 2 * (n // 2)].reshape(2, n // 2)
                rhat[i] = az.rhat(xr, method="rank")
                bulk[i] = az.ess(x, method="bulk")
                tail[i] = az.ess(x, method="tail")
    finally:
        az_logger.setLevel(old)
    return rhat, bulk, tail


def compute_diagnostics(
    samples: dict,
    sample_stats: dict,
    max_tree_depth: int,
    failed=None,
    params=None,
) -> dict:
    """All per-replicate diagnostics, as a dict of numpy arrays with a leading replicate axis.

    Returns keys: ``diverging`` (S,) int count, ``tree_depth_hits`` (S,) int (draws with
    ``tree_depth >= max_tree_depth``), ``bfmi`` (S, chain), ``r_hat``/``ess_bulk``/``ess_tail``
    (S, P) in the order of ``params`` (default: the keys of ``samples``), ``step_size``
    (S, chain) mean step size, ``mean_tree_depth`` (S,), ``n_steps`` (S,) int total leapfrog
    steps, ``acceptance_rate`` (S,) mean, ``n_undefined`` (S,) int: R-hat/ESS values that are
    NaN although the replicate did not fail; plus ``parameter`` (list of names)."""
    if not isinstance(max_tree_depth, (int, np.integer)) or max_tree_depth < 1:
        raise ValueError(f"max_tree_depth must be a positive integer, got {max_tree_depth!r}")
    if not samples:
        raise ValueError("samples is empty")
    params = list(samples) if params is None else list(params)
    missing = [p for p in params if p not in samples]
    if missing:
        raise ValueError(f"samples is missing the parameters {missing}")
    need = ("diverging", "tree_depth", "step_size", "energy")
    missing = [k for k in need if k not in sample_stats]
    if missing:
        raise ValueError(f"sample_stats is missing {missing} (ArviZ names expected)")
    shape = np.shape(samples[params[0]])
    for k in params:
        if np.shape(samples[k]) != shape:
            raise ValueError(f"samples[{k!r}] has shape {np.shape(samples[k])}, expected {shape}")
    for k, v in sample_stats.items():
        if np.ndim(v) == 3 and np.shape(v) != shape:
            raise ValueError(f"sample_stats[{k!r}] has shape {np.shape(v)}, expected {shape}")
    s = shape[0]
    failed = np.zeros(s, bool) if failed is None else np.asarray(failed, bool)
    if failed.shape != (s,):
        raise ValueError(f"failed must have shape ({s},), got {failed.shape}")
    ok = ~failed

    div = _arr3("diverging", sample_stats["diverging"], allow_nan=True)
    depth = _arr3("tree_depth", sample_stats["tree_depth"], allow_nan=True)
    step = _arr3("step_size", sample_stats["step_size"], allow_nan=True).astype(float)

    def count(x):
        return np.where(ok, x, -1).astype(np.int64)

    out = {
        "parameter": params,
        "diverging": count(np.sum(np.nan_to_num(div).astype(bool), axis=(1, 2))),
        "tree_depth_hits": count(np.sum(np.nan_to_num(depth) >= max_tree_depth, axis=(1, 2))),
        "mean_tree_depth": np.where(ok, np.mean(depth, axis=(1, 2)), np.nan),
        "step_size": np.where(ok[:, None], np.mean(step, axis=2), np.nan),
        "bfmi": np.where(ok[:, None], ebfmi(sample_stats["energy"]), np.nan),
    }
    if "n_steps" in sample_stats:
        steps = _arr3("n_steps", sample_stats["n_steps"], allow_nan=True)
        out["n_steps"] = count(np.sum(np.nan_to_num(steps), axis=(1, 2)))
    else:  # NUTS: 2**depth - 1 leapfrog steps at most; use the reported depth as an estimate
        out["n_steps"] = count(np.sum(2 ** np.nan_to_num(depth).astype(np.int64) - 1, axis=(1, 2)))
    if "acceptance_rate" in sample_stats:
        acc = _arr3("acceptance_rate", sample_stats["acceptance_rate"], allow_nan=True)
        out["acceptance_rate"] = np.where(ok, np.mean(acc, axis=(1, 2)), np.nan)
    r = np.full((s, len(params)), np.nan)
    eb, et = r.copy(), r.copy()
    for j, p in enumerate(params):
        r[:, j], eb[:, j], et[:, j] = rhat_ess(samples[p], skip=failed)
    out["r_hat"], out["ess_bulk"], out["ess_tail"] = r, eb, et
    undefined = np.isnan(r) | np.isnan(eb) | np.isnan(et)
    out["n_undefined"] = np.where(ok, undefined.sum(axis=1), 0).astype(np.int64)
    return out


def wall_time_share(n_steps, wall_time: float) -> np.ndarray:
    """Split a batch's wall time over replicates in proportion to their leapfrog steps (an
    estimate of each fit's cost when replicates run together). Failed replicates (n_steps < 0)
    get 0."""
    n = np.asarray(n_steps, dtype=float)
    if n.ndim != 1 or n.size == 0:
        raise ValueError(f"n_steps must be a non-empty 1-d array, got shape {n.shape}")
    if not np.isfinite(wall_time) or wall_time < 0:
        raise ValueError(f"wall_time must be finite and >= 0, got {wall_time!r}")
    n = np.clip(n, 0, None)
    total = n.sum()
    if total == 0:
        return np.full(n.shape, wall_time / n.size)
    return wall_time * n / total


def summary_table(samples: dict, hdi_prob: float = 0.94):
    """ArviZ summary (mean, sd, HDI, MCSE, R-hat, bulk/tail ESS) of draws name -> (chain, draw).

    Returns a pandas DataFrame indexed by parameter name.
    """
    if not samples:
        raise ValueError("samples must map at least one parameter name to a (chain, draw) array")
    for name, arr in samples.items():
        if np.ndim(arr) != 2:
            raise ValueError(f"samples['{name}'] must be (chain, draw), got shape {np.shape(arr)}")
    if not 0 < hdi_prob < 1:
        raise ValueError(f"hdi_prob must be in (0, 1), got {hdi_prob}")
    import arviz as az

    return az.summary({k: np.asarray(v, dtype=float) for k, v in samples.items()}, hdi_prob=hdi_prob)
