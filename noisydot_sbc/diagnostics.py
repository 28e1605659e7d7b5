"""Per-replicate inference diagnostics: R-hat, ESS, E-BFMI, the threshold table, and the
diagnostics of whatever sample statistics an inference method declares.

**R-hat and ESS** (the one implementation in the package): rank-normalised split R-hat and
bulk/tail effective sample size of Vehtari et al. (2021), exactly as ``arviz.rhat`` /
``arviz.ess`` compute them (tests compare to ArviZ to 1e-10), but vectorised over a leading
replicate axis. Hand-written because ArviZ 0.23 handles one (chain, draw) array at a time and
loops over any extra dimension in Python: R-hat + bulk + tail ESS of 1000 replicates x 4 chains
x 250 draws take 1.3-1.5 s CPU through ArviZ, 0.5 s here (this machine), for every parameter
of every SBC chunk. The autocovariance (FFT) is ArviZ's own ``arviz.autocov``.
With a single chain ArviZ refuses R-hat, so the chain is cut into two halves first (R-hat of the
two halves, each split again as ArviZ does); that still detects drift within the chain.

**E-BFMI** per chain (Betancourt 2016): ``sum_t (E_t - E_{t-1})^2 / sum_t (E_t - mean E)^2``,
the formula of ``arviz.bfmi``.

**Declared statistics**: an inference method declares its sample statistics as
``StatSpec(name, level, kind, description)`` (ArviZ names; ``level`` "draw" for (S, chain, draw)
arrays, "replicate" for (S,) arrays). :func:`compute_diagnostics` turns each declared statistic
into per-replicate diagnostics (table :data:`DERIVED`) and nothing else: a kernel that declares no
``diverging`` gets no divergence count, a quadrature posterior (independent exact draws) gets no
R-hat/ESS but its replicate-level statistics (``log_marginal``, ``error_estimate``, ...).

**Thresholds**: :data:`THRESHOLDS`, the one table used by the plots, the degeneracy flags of
:mod:`noisydot_sbc.identifiability` and the fit warnings (:func:`threshold_warnings`).

Replicates marked ``failed`` get NaN for every float diagnostic, -1 for every count and False for
every flag; NaN R-hat/ESS elsewhere means the diagnostic is undefined (e.g. constant draws), see
``n_undefined``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.stats

from ._validation import as_array

__all__ = [
    "THRESHOLDS",
    "DERIVED",
    "Derived",
    "Diagnostics",
    "ebfmi",
    "rhat",
    "ess",
    "rhat_ess",
    "chain_separation",
    "compute_diagnostics",
    "threshold_warnings",
    "wall_time_share",
    "summary_table",
]

# ----------------------------------------------------------------------------------- thresholds
#: The warning thresholds of the project (one table; plots, identifiability and fit warnings read
#: it). Direction: R-hat, divergences, chain separation, sign fraction warn ABOVE the value; ESS,
#: E-BFMI and log-scale contraction warn BELOW it.
#:
#: - ``r_hat`` 1.01: Vehtari et al. (2021). It was 1.05 in the degeneracy flags (to spare single
#:   chains a chance flag); one value everywhere, the recommended one, because a fit the plots mark
#:   as unconverged must not be called unimodal and converged by the degeneracy table. Measured:
#:   iid single chains of 1000 draws exceed it in 0.1% of replicates, autocorrelated ones (AR(1),
#:   phi 0.5) in 11% (none exceed 1.05): there the flag means "the chain halves disagree".
#: - ``ess_bulk``, ``ess_tail`` 400: 100 per chain for 4 chains (Vehtari et al. 2021).
#: - ``bfmi`` 0.3 (Betancourt 2016).
#: - ``diverging`` 0: any divergent transition makes the fit suspect.
#: - ``chain_separation`` 3: chain means more than 3 pooled within-chain sds apart (unimodal
#:   posteriors give about sd / sqrt(ESS)).
#: - ``sign_fraction`` 0.01: more than 1% of draws of the minority sign (±σ mirror modes).
#: - ``prior_dominated`` 0.1: log-scale contraction below 0.1, the data removed less than 10% of
#:   the prior variance of log σ.
THRESHOLDS: dict = {
    "r_hat": 1.01,
    "ess_bulk": 400.0,
    "ess_tail": 400.0,
    "bfmi": 0.3,
    "diverging": 0,
    "chain_separation": 3.0,
    "sign_fraction": 0.01,
    "prior_dominated": 0.1,
}


# ----------------------------------------------------------------------------------- R-hat / ESS
def _draws3(name: str, draws, failed, min_draws: int) -> tuple[np.ndarray, np.ndarray]:
    d = as_array(name, draws, ndim=3, kind="f", failed=None, finite=False)
    s, c, n = d.shape
    f = np.zeros(s, bool) if failed is None else as_array("failed", failed, ndim=1, kind="b")
    if f.shape != (s,):
        raise ValueError(f"failed must have shape ({s},) to match {name} {d.shape}, got {f.shape}")
    as_array(name, d, failed=f)  # non-finite only in failed replicates
    need = min_draws * (2 if c == 1 else 1)
    if n < need:
        raise ValueError(f"{name} needs at least {need} draws per chain for R-hat/ESS ({c} chain(s)), got {n}")
    return d, f


def _split(a: np.ndarray) -> np.ndarray:
    """(S, C, D) -> (S, 2C, D//2): first and last halves of every chain (ArviZ's split)."""
    half = a.shape[2] // 2
    return np.concatenate([a[:, :, :half], a[:, :, a.shape[2] - half:]], axis=1)


def _z_scale(a: np.ndarray) -> np.ndarray:
    """Rank-normalise each replicate over all its chains and draws (Blom offset 3/8)."""
    flat = a.reshape(a.shape[0], -1)
    r = scipy.stats.rankdata(flat, method="average", axis=1)
    n = flat.shape[1]
    return scipy.stats.norm.ppf((r - 3 / 8) / (n - 2 * 3 / 8 + 1)).reshape(a.shape)


def _rhat_plain(a: np.ndarray) -> np.ndarray:
    n = a.shape[2]
    within = a.var(axis=2, ddof=1).mean(axis=1)
    between = n * a.mean(axis=2).var(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((between / within + n - 1) / n)


def _rhat_rank(a: np.ndarray) -> np.ndarray:
    split = _split(a)
    bulk = _rhat_plain(_z_scale(split))
    med = np.median(split.reshape(split.shape[0], -1), axis=1)[:, None, None]
    tail = _rhat_plain(_z_scale(np.abs(split - med)))
    return np.where(tail > bulk, tail, bulk)  # max(bulk, tail) as ArviZ takes it (NaN stays NaN)


def _ess_plain(a: np.ndarray) -> np.ndarray:
    """ESS of (S, m, n) arrays: Geyer's initial positive and monotone sequences, vectorised in
    the form ArviZ's loop takes (same pairs, same truncation, same 1/log10(mn) floor)."""
    import arviz as az

    a = np.asarray(a, dtype=float)
    s, m, n = a.shape
    const = (a.max(axis=(1, 2)) - a.min(axis=(1, 2))) < np.finfo(float).resolution
    acov = az.autocov(a, axis=2)
    mean_var = acov[:, :, 0].mean(axis=1) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if m > 1:
        var_plus = var_plus + a.mean(axis=2).var(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = 1.0 - (mean_var[:, None] - acov.mean(axis=1)) / var_plus[:, None]  # (S, n)
        ts = np.arange(1, n - 3, 2)
        pairs = np.empty((s, ts.size + 1))
        pairs[:, 0] = 1.0 + rho[:, 1]
        pairs[:, 1:] = rho[:, ts + 1] + rho[:, ts + 2]
        stop = ~(pairs > 0)
        it = np.minimum(ts.size, np.where(stop.any(axis=1), np.argmax(stop, axis=1), ts.size + 1))
        monotone = np.minimum.accumulate(pairs, axis=1)
        csum = np.concatenate([np.zeros((s, 1)), np.cumsum(monotone, axis=1)], axis=1)
        rows = np.arange(s)
        total = csum[rows, it]
        even_last = rho[rows, 2 * it]
        kept = (even_last > 0) | (pairs[rows, it] >= 0)
        extra = np.where(it == 0, 1.0, np.where(kept, even_last, 0.0))
        tau = np.maximum(-1.0 + 2.0 * total + extra, 1.0 / np.log10(m * n))
        out = m * n / tau
    out = np.where(np.isnan(rho[:, 1]), np.nan, out)
    return np.where(const, float(m * n), out)


def rhat(draws, failed=None) -> np.ndarray:
    """Rank-normalised split R-hat per replicate, (S, chain, draw) -> (S,); equals
    ``arviz.rhat(draws[s])`` for two or more chains (one chain: cut in halves first). Replicates
    marked ``failed`` get NaN; constant draws give NaN (undefined)."""
    d, f = _draws3("draws", draws, failed, min_draws=4)
    out = np.full(d.shape[0], np.nan)
    ok = ~f
    if ok.any():
        x = d[ok]
        if x.shape[1] == 1:
            x = _split(x)
        with np.errstate(all="ignore"):
            out[ok] = _rhat_rank(x)
    return out


def ess(draws, method: str = "bulk", failed=None) -> np.ndarray:
    """Bulk or tail effective sample size per replicate, (S, chain, draw) -> (S,); equals
    ``arviz.ess(draws[s], method=...)``. Failed replicates get NaN."""
    if method not in ("bulk", "tail"):
        raise ValueError(f"method must be 'bulk' or 'tail', got {method!r}")
    d, f = _draws3("draws", draws, failed, min_draws=4)
    out = np.full(d.shape[0], np.nan)
    ok = ~f
    if not ok.any():
        return out
    x = d[ok]
    with np.errstate(all="ignore"):
        if method == "bulk":
            out[ok] = _ess_plain(_z_scale(_split(x)))
        else:
            flat = x.reshape(x.shape[0], -1)
            q = np.quantile(flat, [0.05, 0.95], axis=1)  # type 7, as ArviZ's mquantiles(1, 1)
            lo = _ess_plain(_split((x <= q[0][:, None, None]).astype(float)))
            hi = _ess_plain(_split((x <= q[1][:, None, None]).astype(float)))
            out[ok] = np.where(hi < lo, hi, lo)
    return out


def rhat_ess(draws, skip=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R-hat, bulk ESS, tail ESS) per replicate from (S, chain, draw); ``skip`` (S,) bool marks
    failed replicates (NaN there). Three (S,) arrays; see :func:`rhat` and :func:`ess`."""
    return rhat(draws, skip), ess(draws, "bulk", skip), ess(draws, "tail", skip)


def chain_separation(draws, failed=None) -> np.ndarray:
    """(max - min of chain means) / pooled within-chain sd, per replicate, (S, chain, draw) ->
    (S,); a single chain is cut in halves. 0 for constant draws, inf when chains are constant but
    different; NaN for failed replicates."""
    d, f = _draws3("draws", draws, failed, min_draws=2)
    out = np.full(d.shape[0], np.nan)
    ok = ~f
    if ok.any():
        ch = d[ok] if d.shape[1] > 1 else _split(d[ok])
        means = ch.mean(axis=2)
        within = np.sqrt(ch.var(axis=2, ddof=1).mean(axis=1))
        spread = means.max(axis=1) - means.min(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[ok] = np.where(within > 0, spread / np.where(within > 0, within, 1.0),
                               np.where(spread > 0, np.inf, 0.0))
    return out


def ebfmi(energy, failed=None) -> np.ndarray:
    """E-BFMI per chain: (S, chain, draw) energy -> (S, chain). Values < 0.3 flag poor momentum
    resampling (heavy-tailed energy transitions). NaN for failed replicates."""
    e = as_array("energy", energy, ndim=3, kind="f", finite=failed is not None, failed=failed)
    if e.shape[2] < 2:
        raise ValueError("energy needs at least 2 draws per chain")
    num = np.sum(np.diff(e, axis=2) ** 2, axis=2)
    den = np.sum((e - e.mean(axis=2, keepdims=True)) ** 2, axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    if failed is not None:
        out[np.asarray(failed, bool)] = np.nan
    return out


# ----------------------------------------------------------------------------------- declared stats
class Derived(NamedTuple):
    """A per-replicate diagnostic: ``dims`` after ``replicate`` (e.g. ``("chain",)``), ``kind``
    ('f', 'i', 'b'), the declared statistic it comes from and what it means."""

    dims: tuple
    kind: str
    source: str
    description: str


#: Diagnostics derived from a declared draw-level statistic of that ArviZ name, and from the draws
#: themselves (``source`` "draws"). A declared statistic not listed here becomes its per-replicate
#: count (kind 'b') or mean (kinds 'i', 'f') under its own name.
DERIVED: dict = {
    "r_hat": Derived(("parameter",), "f", "draws", "rank-normalised split R-hat (Vehtari et al. 2021)"),
    "ess_bulk": Derived(("parameter",), "f", "draws", "bulk effective sample size"),
    "ess_tail": Derived(("parameter",), "f", "draws", "tail effective sample size (5% and 95% quantiles)"),
    "n_undefined": Derived((), "i", "draws", "R-hat/ESS values that are undefined (e.g. constant draws)"),
    "diverging": Derived((), "i", "diverging", "number of divergent transitions"),
    "tree_depth_hits": Derived((), "i", "tree_depth", "draws at the maximum tree depth"),
    "mean_tree_depth": Derived((), "f", "tree_depth", "mean tree depth"),
    "n_steps": Derived((), "i", "n_steps", "total leapfrog steps"),
    "bfmi": Derived(("chain",), "f", "energy", "E-BFMI per chain (Betancourt 2016)"),
    "step_size": Derived(("chain",), "f", "step_size", "mean step size per chain"),
    "acceptance_rate": Derived((), "f", "acceptance_rate", "mean acceptance rate"),
}


class Diagnostics(dict):
    """Per-replicate diagnostics: a dict name -> numpy array (leading replicate axis), plus
    ``parameter`` (list of names). ``dims[name]`` gives each array's dims (``replicate`` first),
    ``descriptions[name]`` its meaning, ``levels[name]`` where it comes from ("draws" for R-hat/
    ESS, "draw" for a reduced draw-level statistic, "replicate" for a declared replicate-level
    one); :meth:`variables` gives ``name -> (dims, array)`` and :meth:`attrs` ``name ->
    {"description", "level"}``, both for :func:`noisydot_sbc.results.build_sbc_dataset`."""

    def __init__(self, parameter):
        super().__init__(parameter=list(parameter))
        self.dims: dict = {}
        self.descriptions: dict = {}
        self.levels: dict = {}

    def put(self, name, dims, array, description, level="draw"):
        self[name] = array
        self.dims[name] = ("replicate",) + tuple(dims)
        self.descriptions[name] = description
        self.levels[name] = level

    def variables(self) -> dict:
        return {k: (self.dims[k], v) for k, v in self.items() if k in self.dims}

    def attrs(self) -> dict:
        return {k: {"description": self.descriptions[k], "level": self.levels[k]} for k in self.dims}


def _spec_fields(spec):
    if isinstance(spec, tuple) and len(spec) >= 3:
        return spec[0], spec[1], spec[2], (spec[3] if len(spec) > 3 else "")
    return spec.name, spec.level, spec.kind, getattr(spec, "description", "")


def compute_diagnostics(
    samples,
    sample_stats: dict | None = None,
    max_tree_depth: int | None = None,
    failed=None,
    params=None,
    *,
    fit_stats: dict | None = None,
    stat_specs=None,
    independent_draws: bool = False,
) -> Diagnostics:
    """Per-replicate diagnostics of a batch of fits, from what the inference method declares.

    Call it with a ``Posterior`` (``compute_diagnostics(posterior)``: samples, sample_stats,
    fit_stats, stat_specs, failed, independent_draws and ``info["max_tree_depth"]`` are read from
    it) or with the parts. ``samples``: site -> (S, chain, draw); ``sample_stats``: declared
    draw-level stats -> (S, chain, draw); ``fit_stats``: replicate-level -> (S,); ``stat_specs``:
    StatSpec per statistic (without it every ``sample_stats`` entry is taken as declared at draw
    level). ``params``: the sites to diagnose (default: all of ``samples``).

    Returns :class:`Diagnostics`: ``r_hat``/``ess_bulk``/``ess_tail`` (S, P) and ``n_undefined``
    (S,) unless ``independent_draws`` (exact iid draws need no convergence check); the entries of
    :data:`DERIVED` whose source statistic is declared (``tree_depth_hits`` needs
    ``max_tree_depth``); any other declared statistic under its own name (draw level: count of
    True or mean per replicate; replicate level: as given)."""
    if hasattr(samples, "stat_specs") and hasattr(samples, "samples"):
        post = samples
        samples, sample_stats, fit_stats = post.samples, post.sample_stats, post.fit_stats
        stat_specs, failed = post.stat_specs, post.failed
        independent_draws = bool(getattr(post, "independent_draws", False))
        if max_tree_depth is None:
            max_tree_depth = (getattr(post, "info", None) or {}).get("max_tree_depth")
    if max_tree_depth is not None and (not isinstance(max_tree_depth, (int, np.integer)) or max_tree_depth < 1):
        raise ValueError(f"max_tree_depth must be a positive integer, got {max_tree_depth!r}")
    if not samples:
        raise ValueError("samples is empty")
    sample_stats = dict(sample_stats or {})
    fit_stats = dict(fit_stats or {})
    params = list(samples) if params is None else list(params)
    missing = [p for p in params if p not in samples]
    if missing:
        raise ValueError(f"samples is missing the parameters {missing}")
    shape = np.shape(samples[params[0]])
    if len(shape) != 3:
        raise ValueError(f"samples[{params[0]!r}] must be (S, chain, draw), got shape {shape}")
    for k in params:
        if np.shape(samples[k]) != shape:
            raise ValueError(f"samples[{k!r}] has shape {np.shape(samples[k])}, expected {shape}")
    s = shape[0]
    failed = np.zeros(s, bool) if failed is None else as_array("failed", failed, ndim=1, kind="b")
    if failed.shape != (s,):
        raise ValueError(f"failed must have shape ({s},), got {failed.shape}")
    ok = ~failed

    if stat_specs is None:
        specs = {k: (k, "draw", np.asarray(v).dtype.kind if np.asarray(v).dtype.kind in "bi" else "f", "")
                 for k, v in sample_stats.items()}
        specs.update({k: (k, "replicate", np.asarray(v).dtype.kind if np.asarray(v).dtype.kind in "bi" else "f", "")
                      for k, v in fit_stats.items()})
    else:
        specs = {}
        for sp in stat_specs:
            name, level, kind, desc = _spec_fields(sp)
            if level not in ("draw", "replicate"):
                raise ValueError(f"stat_specs[{name!r}].level must be 'draw' or 'replicate', got {level!r}")
            if kind not in ("f", "i", "b"):
                raise ValueError(f"stat_specs[{name!r}].kind must be 'f', 'i' or 'b', got {kind!r}")
            specs[name] = (name, level, kind, desc)
        undeclared = [k for k in list(sample_stats) + list(fit_stats) if k not in specs]
        if undeclared:
            raise ValueError(f"sample_stats/fit_stats hold undeclared statistics {undeclared}; declare a StatSpec for each")

    out = Diagnostics(params)

    def floats(x):
        return np.where(ok.reshape((-1,) + (1,) * (np.ndim(x) - 1)), x, np.nan)

    def count(x):
        return np.where(ok, x, -1).astype(np.int64)

    if not independent_draws:
        r = np.full((s, len(params)), np.nan)
        eb, et = r.copy(), r.copy()
        for j, p in enumerate(params):
            r[:, j], eb[:, j], et[:, j] = rhat_ess(samples[p], skip=failed)
        for name, arr in (("r_hat", r), ("ess_bulk", eb), ("ess_tail", et)):
            out.put(name, DERIVED[name].dims, arr, DERIVED[name].description, "draws")
        undefined = np.isnan(r) | np.isnan(eb) | np.isnan(et)
        out.put("n_undefined", (), np.where(ok, undefined.sum(axis=1), 0).astype(np.int64),
                DERIVED["n_undefined"].description, "draws")

    for name, (_, level, kind, desc) in specs.items():
        src = sample_stats if level == "draw" else fit_stats
        if name not in src:
            continue  # declared but not recorded in this batch
        if level == "replicate":
            # an infinite replicate-level value is a stated one (a quadrature's error_estimate = inf:
            # no estimate); NaN in a replicate not marked failed is refused
            v = as_array(f"fit_stats[{name!r}]", src[name], ndim=1, kind=kind, failed=failed, allow_inf=True)
            if v.shape != (s,):
                raise ValueError(f"fit_stats[{name!r}] must have shape ({s},), got {v.shape}")
            v = count(v) if kind == "i" else (v & ok if kind == "b" else floats(v))
            out.put(name, (), v, desc, "replicate")
            continue
        v = as_array(f"sample_stats[{name!r}]", src[name], ndim=3, kind="numeric", failed=failed)
        if v.shape != shape:
            raise ValueError(f"sample_stats[{name!r}] has shape {v.shape}, expected {shape}")
        clean = np.where(ok[:, None, None], v, 0)
        if name == "diverging":
            out.put("diverging", (), count(np.sum(clean.astype(bool), axis=(1, 2))), DERIVED["diverging"].description)
        elif name == "tree_depth":
            out.put("mean_tree_depth", (), floats(clean.mean(axis=(1, 2))), DERIVED["mean_tree_depth"].description)
            if max_tree_depth is not None:
                out.put("tree_depth_hits", (), count(np.sum(clean >= max_tree_depth, axis=(1, 2))),
                        DERIVED["tree_depth_hits"].description)
        elif name == "n_steps":
            out.put("n_steps", (), count(np.sum(clean, axis=(1, 2))), DERIVED["n_steps"].description)
        elif name == "energy":
            out.put("bfmi", ("chain",), ebfmi(np.where(ok[:, None, None], v, 0.0), failed), DERIVED["bfmi"].description)
        elif name == "step_size":
            out.put("step_size", ("chain",), floats(clean.astype(float).mean(axis=2)), DERIVED["step_size"].description)
        elif kind == "b":
            out.put(name, (), count(np.sum(clean.astype(bool), axis=(1, 2))), desc or f"draws with {name}")
        else:
            out.put(name, (), floats(clean.astype(float).mean(axis=(1, 2))), desc or f"mean {name}")
    return out


def threshold_warnings(diag: dict, replicate: int = 0, thresholds: dict | None = None) -> list[str]:
    """One line per diagnostic of replicate ``replicate`` beyond :data:`THRESHOLDS`, e.g.
    ``"R-hat of x_noise_lvl is 1.02 (> 1.01)"``; empty when the fit looks fine. Reads only the
    diagnostics present (a quadrature posterior has no R-hat, no divergences)."""
    t = dict(THRESHOLDS if thresholds is None else thresholds)
    params = list(diag.get("parameter", []))
    msgs = []
    for key, label in (("r_hat", "R-hat"), ("ess_bulk", "bulk ESS"), ("ess_tail", "tail ESS")):
        if key not in diag:
            continue
        vals = np.asarray(diag[key])[replicate]
        for p, v in zip(params, vals):
            if not np.isfinite(v):
                msgs.append(f"{label} of {p} is undefined (constant or non-finite draws)")
            elif (key == "r_hat" and v > t[key]) or (key != "r_hat" and v < t[key]):
                msgs.append(f"{label} of {p} is {v:.4g} ({'>' if key == 'r_hat' else '<'} {t[key]:g})")
    if "diverging" in diag and int(np.asarray(diag["diverging"])[replicate]) > t["diverging"]:
        msgs.append(f"{int(np.asarray(diag['diverging'])[replicate])} divergent transition(s)")
    if "bfmi" in diag:
        b = np.asarray(diag["bfmi"])[replicate]
        low = np.flatnonzero(b < t["bfmi"])
        if low.size:
            msgs.append(f"E-BFMI below {t['bfmi']:g} in chain(s) {low.tolist()} (min {np.nanmin(b):.3g})")
    if "tree_depth_hits" in diag and int(np.asarray(diag["tree_depth_hits"])[replicate]) > 0:
        msgs.append(f"{int(np.asarray(diag['tree_depth_hits'])[replicate])} draw(s) hit the maximum tree depth")
    return msgs


def wall_time_share(n_steps, wall_time: float) -> np.ndarray:
    """Split a batch's wall time over replicates in proportion to their leapfrog steps (an
    estimate of each fit's cost when replicates run together). Failed replicates (n_steps < 0)
    get 0; without step counts (all zero) the time is split equally."""
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
