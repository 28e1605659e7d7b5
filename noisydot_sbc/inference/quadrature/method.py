"""The quadrature method: the integration of one batch of replicates (seed, polish, half-axis
extents, walk, assessment, refinement, draws), :func:`integrate` over all replicates,
:func:`posterior_quantiles`, :func:`posterior_moments`, the method class :class:`Quadrature` and
the model check :func:`check_quadrature_model`."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from .config import FIT_STATS, PROBS, QuadratureConfig, QuadratureResult, param_names
from .corrected import Corrected, correction_error, grid_mask
from .evaluate import (SEED_CHUNK, Evaluator, GaussianEvaluator, cached, folded_log_prior, likelihood_key,
                       point_loglik, prior_key, prior_lp_fn, prior_median_z, seed_fn, whitening)
from .lattice import Frame, Lattice, evaluate_nodes, finite_or, half_axis_scales, stencil_newton, stretch, walk
from .summaries import assess, cdf_quantiles


def check_quadrature_model(model):
    """ValueError unless ``model`` is a :class:`~noisydot_sbc.models.Model` with exactly the two noise levels."""
    for attr in ("name", "prior", "loglik", "y_noise"):
        if not hasattr(model, attr):
            raise ValueError(
                f"model must be a models.Model (build_model) for quadrature; got {type(model).__name__} without .{attr}"
            )
    if model.name == "latent":
        raise ValueError("model 'latent' has N*M latent weight-noise sites; quadrature integrates 2 parameters only "
                         "(use model 'marginal', its exact marginalisation)")
    if tuple(getattr(model, "params", ())) != param_names():
        raise ValueError(f"model.params must be {param_names()} for quadrature, got {getattr(model, 'params', None)!r}")
    if getattr(model, "shared_w_noise", False):
        raise ValueError("shared_w_noise=True makes observations dependent; quadrature needs the per-observation loglik")


# ---------------------------------------------------------------------------------------------
# the integration of one batch
# ---------------------------------------------------------------------------------------------

def _signed(d) -> bool:
    """Whether the prior puts mass on σ < 0 (then draws get signs; the likelihood sees |σ|)."""
    return bool(d.support(jnp.asarray(-1.0)))


def _integrate_batch(key, model, data, rep_idx, cfg: QuadratureConfig, ev: Evaluator, ev_approx=None):
    B = rep_idx.size
    prior = model.prior
    D = float(cfg.log_density_drop)
    n_eval = np.zeros(B, np.int64)
    failed = np.zeros(B, bool)
    errors = [""] * B
    prior_lp = prior_lp_fn(prior)

    # 1. seed: Newton on the Gaussian-approximation posterior (on the model itself where its
    #    likelihood is closed-form; the exact likelihood's derivatives are too costly here)
    dt = data["x"].dtype
    if model.name == "marginal":
        from ...likelihoods import gaussian_logpdf

        y_noise = float(model.y_noise)
        seed_key = ("gaussian", y_noise)
        total = lambda y, x, w, sx, sw: jnp.sum(gaussian_logpdf(y, x, w, sx, sw, y_noise))
    else:
        seed_key = likelihood_key(model)
        point = point_loglik(model)
        total = lambda y, x, w, sx, sw: point(y, x, w, sx, sw)[0]
    fams, pp = prior_key(prior)
    seed = cached(("seed", fams, seed_key, cfg.seed_steps), lambda: seed_fn(fams, total, cfg.seed_steps))
    zmed = prior_median_z(prior)
    m = np.empty((B, 2))
    nh = np.empty((B, 2, 2))
    for c in range(0, B, SEED_CHUNK):  # fixed-size chunks: one compiled shape
        idx = rep_idx[c:c + SEED_CHUNK]
        n = idx.size
        pad = np.concatenate([idx, np.full(SEED_CHUNK - n, idx[0])])
        zs, nh_c, _ = seed(jnp.asarray(np.tile(zmed, (SEED_CHUNK, 1)), dt), jnp.asarray(pp, dt), data["y"][pad],
                           data["x"][pad], data["w"][pad])
        m[c:c + n] = np.asarray(zs, np.float64)[:n]
        nh[c:c + n] = np.asarray(nh_c, np.float64)[:n]
    bad = ~(np.isfinite(m).all(1) & np.isfinite(nh).all((1, 2)))
    m[bad] = zmed
    nh[bad] = np.eye(2)
    C = whitening(nh)

    # 2. polish on the model's own likelihood (stencil Newton); 2b. half-axis extents -> warp
    #    (on the corrected lattice probed on the approximation, shifted by the correction at the
    #    centre: the extents shape the lattice only, the walk goes wherever the mass is)
    h = float(cfg.dz)
    k0 = int(cfg.exact_stride) if ev_approx is not None else 1
    corrected = k0 > 1
    vals, errs, lls = stencil_newton(ev, rep_idx, m, C, prior_lp, h, cfg.polish_steps, n_eval, cfg.max_nodes)
    top = np.where(np.isfinite(vals).any((1, 2)), np.nanmax(np.where(np.isfinite(vals), vals, -np.inf), axis=(1, 2)),
                   -np.inf)
    if corrected:
        gl_c, _ = ev_approx(rep_idx, m[:, None, :])
        shift = finite_or(lls[:, 1, 1] - gl_c[:, 0], 0.0)
        s_neg, s_pos = half_axis_scales(ev_approx, rep_idx, m, C, prior_lp, D, top - shift, np.zeros(B, np.int64),
                                         cfg.max_nodes)
    else:
        s_neg, s_pos = half_axis_scales(ev, rep_idx, m, C, prior_lp, D, top, n_eval, cfg.max_nodes)
    r0 = math.sqrt(2.0 * D)
    a_w = np.vectorize(lambda s: stretch(s * r0, r0))(s_pos)
    b_w = np.vectorize(lambda s: stretch(s * r0, r0))(s_neg)
    frames = [Frame(m[i], C[i], a_w[i], b_w[i]) for i in range(B)]
    # the lattice starts around the walk's first disk and grows up to max_radius as the walk needs
    lat = Lattice(B, h, int(math.ceil(r0 / h)) + 2, np.full(B, k0) if corrected else None,
                  R_max=int(math.ceil(cfg.max_radius / h)), align=2 * k0)
    R = lat.R
    # the stencil's nodes are lattice nodes only where the warp is the identity near the centre
    same = (b_w == 0.0).all(1) & (a_w == 0.0).all(1)
    lat.val[same, R - 1:R + 2, R - 1:R + 2] = vals[same]
    lat.err[same, R - 1:R + 2, R - 1:R + 2] = errs[same]
    corr_err = np.zeros(B)
    checks = [None] * B
    if corrected:
        corr = Corrected(ev, ev_approx, rep_idx, frames, prior_lp, cfg.exact_core_drop, D)
        lat.ll[same, R - 1:R + 2, R - 1:R + 2] = lls[same]
        placed = np.zeros(lat.val.shape, bool)
        placed[same, R - 1:R + 2, R - 1:R + 2] = True
        corr.approx(lat, placed)
        corr.refresh(lat)
        evaluate = corr
    else:
        evaluate = lambda lat_, pending, n_ev: evaluate_nodes(ev, rep_idx, lat_, pending, frames, prior_lp, n_ev)

    # 3. walk; 4.-5. assess, refine the replicates above tolerance (a sub-batch each level)
    capped = walk(evaluate, lat, D, cfg.max_nodes, n_eval, first=True, trim=not corrected)
    if corrected:
        corr.refresh(lat)
        checks = corr.check(lat, n_eval, cfg.max_nodes)
    results = [None] * B
    level_h = np.full(B, h)
    stride = np.full(B, k0)
    cur = np.arange(B)  # replicates (of this batch) on the current lattice
    for level in range(cfg.max_refinements + 1):
        for r_, b in enumerate(cur):
            v = lat.val[r_]
            if not np.isfinite(v).any():
                failed[b], errors[b] = True, "log posterior is -inf or NaN at every lattice node"
                continue
            try:
                results[b] = assess(v, lat.err[r_], lat.h, lat.R, frames[b], D, cfg.fine_grid)
            except (ValueError, np.linalg.LinAlgError) as err:
                failed[b], errors[b] = True, f"quadrature summary failed: {err}"
                continue
            corr_err[b] = correction_error(checks[b], results[b]["full"])
            results[b]["error"] += corr_err[b]
            level_h[b] = lat.h
            stride[b] = 1 if lat.k is None else lat.k[r_]
        sel = np.array([results[b] is not None and not failed[b] and (results[b]["error"] > cfg.tolerance)
                        and n_eval[b] < cfg.max_nodes for b in cur], bool)
        if level == cfg.max_refinements or not sel.any():
            break
        # halve the step for the replicates above tolerance: old node (i, j) -> (2i, 2j). On the
        # corrected lattice the exact sublattices keep their steps (stride 2k) unless the
        # correction's interpolation is the larger share of the error: then they halve too
        k_new = None
        if corrected:
            k_cur = lat.k[sel]
            sb = cur[sel]
            rest = np.array([results[b]["error"] for b in sb]) - corr_err[sb]
            shrink = (corr_err[sb] > 0.5 * cfg.tolerance) & (corr_err[sb] >= rest) & (k_cur > 1)
            k_new = np.where(shrink, k_cur, 2 * k_cur)
        lat = lat.refined(sel, k_new)
        cur = cur[sel]
        ne = n_eval[cur].copy()
        sub_frames = [frames[i] for i in cur]
        if corrected:
            corr = Corrected(ev, ev_approx, rep_idx[cur], sub_frames, prior_lp, cfg.exact_core_drop, D)
            on = np.stack([grid_mask(lat, int(lat.k[r_])) for r_ in range(cur.size)]) & np.isfinite(lat.gl)
            corr.exact(lat, on, ne)  # the new sublattice nodes in the known region
            corr.refresh(lat)
            corr.core(lat, ne)
            evaluate = corr
        else:
            sub_idx = rep_idx[cur]
            evaluate = lambda lat_, pending, n_ev: evaluate_nodes(ev, sub_idx, lat_, pending, sub_frames, prior_lp, n_ev)
        capped[cur] = walk(evaluate, lat, D, cfg.max_nodes, ne, first=False, trim=not corrected)
        if corrected:
            corr.refresh(lat)
            for b, c in zip(cur, corr.check(lat, ne, cfg.max_nodes)):
                checks[b] = c
        n_eval[cur] = ne

    # outputs: draws (inverse CDF on the fine grid), marginals, moments, fit statistics
    F = cfg.fine_grid
    L = int(cfg.num_draws)
    params = param_names()
    draws = {p: np.full((B, L), np.nan) for p in params}
    marg = {p: (np.full((B, F + 1), np.nan), np.full((B, F + 1), np.nan)) for p in params}
    mom = {p: {k: np.full(B, np.nan) for k in ("mean", "sd", "log_mean", "log_sd")} for p in params}
    log_z = np.full(B, np.nan)
    err_est = np.full(B, np.inf)
    certified = np.zeros(B, bool)
    boundary = np.full(B, np.nan)
    uni = host_rng(key).random((B, L, 5))
    dists = (prior.x_noise_lvl.distribution(), prior.w_noise_lvl.distribution())
    signed = tuple(_signed(d) for d in dists)
    for b in range(B):
        r = results[b]
        if failed[b] or r is None:
            failed[b] = True
            errors[b] = errors[b] or "quadrature produced no result"
            continue
        lm = r["logmass"]
        p = np.exp(lm - np.max(lm)).ravel()
        cum = np.cumsum(p)
        cum /= cum[-1]
        cell = np.minimum(np.searchsorted(cum, uni[b, :, 0], side="right"), cum.size - 1)
        ci, cj = np.unravel_index(cell, lm.shape)
        zx = r["ax"][0][ci] + (uni[b, :, 1] - 0.5) * r["width"][0]
        zw = r["ax"][1][cj] + (uni[b, :, 2] - 0.5) * r["width"][1]
        for k, (pname, zk) in enumerate(zip(params, (zx, zw))):
            s = np.exp(zk)
            if signed[k]:
                _, lneg = folded_log_prior(dists[k], jnp.asarray(s))
                s = np.where(uni[b, :, 3 + k] < np.exp(np.asarray(lneg)), -s, s)
            draws[pname][b] = s
            summ = r["full"][k]
            marg[pname][0][b], marg[pname][1][b] = summ["edges"], summ["cdf"]
            for name in mom[pname]:
                mom[pname][name][b] = summ[name]
        log_z[b] = r["log_z"]
        # a walk cut short (node budget, lattice edge) leaves mass the lattice never saw: no estimate
        err_est[b] = r["error"] if not capped[b] else np.inf
        boundary[b] = r["boundary"]
        certified[b] = bool(np.isfinite(err_est[b]) and err_est[b] <= cfg.tolerance)  # capped: inf
        if not np.isfinite(log_z[b]):
            failed[b], errors[b] = True, "log marginal likelihood is not finite"
    return dict(draws=draws, marginals=marg, moments=mom, log_marginal_likelihood=log_z, error_estimate=err_est,
                certified=certified, n_evaluations=n_eval, grid_step=level_h, boundary_mass=boundary,
                correction_error=corr_err, exact_stride=stride, failed=failed, error=errors)


AUTO_BATCH = 64  # replicates per batch by default: a batch's host work per replicate grows with its size
# (each walk round scans the whole (B, G, G) lattice, and runs until its slowest replicate is done).
# Measured on 2 cores, 256 replicates, N = 200, M = 8, two threads: 86-96 ms per fit at 16-96 per
# batch, 127 ms at 128


def _workers(chain_method, n_devices) -> int:
    """Threads that integrate batches at once: one per local device under ``parallel``; on a
    single device (a CPU) two, if there are two cores: while one batch's host work (lattice
    bookkeeping, splines) holds the GIL, the other's likelihood runs in XLA, which releases it.
    Measured on 2 cores (64 replicates, N = 200, M = 8): 129 ms per fit in one batch, 95 ms with
    two threads, 108 and 119 ms with three and four (they wait on the GIL)."""
    if chain_method != "parallel":
        return 1
    return n_devices if n_devices > 1 else min(os.cpu_count() or 1, 2)


def host_rng(key) -> np.random.Generator:
    """A NumPy generator seeded by the bits of the JAX key ``key`` (typed or raw): the draws'
    uniforms are made on the host, where ``jax.random`` would compile anew for every batch size."""
    if jnp.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


def _approximation_model(model, approximation):
    """The Model whose likelihood serves as the cheap approximation (None: no corrected lattice)."""
    from ...models import Model, build_model

    if approximation is None:
        if model.name != "marginal":
            return None
        return build_model("gaussian", model.prior, model.y_noise)
    if not callable(approximation):
        raise ValueError(f"approximation must be a callable loglik(y, x, w, sx, sw) or None, got {approximation!r}")
    return Model("approximation", None, model.prior, float(model.y_noise), False, approximation)


def _check_data(data):
    for k in ("x", "w", "y"):
        if k not in data:
            raise ValueError(f"data must have keys 'x', 'w', 'y'; missing {k!r}")
    x, w, y = (np.asarray(data[k]) for k in ("x", "w", "y"))
    if x.ndim != 3:
        raise ValueError(f"data['x'] must have shape (S, N, M), got {x.shape}")
    S, N, M = x.shape
    if w.shape != (S, M):
        raise ValueError(f"data['w'] must have shape (S, M) = {(S, M)}, got {w.shape}")
    if y.shape != (S, N):
        raise ValueError(f"data['y'] must have shape (S, N) = {(S, N)}, got {y.shape}")
    for k, a in (("x", x), ("w", w), ("y", y)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"data[{k!r}] has non-finite values")
    return S


def _replace_rows(out, rows, new):
    """Rows ``rows`` of every per-replicate array in the nested dict ``out`` (arrays and lists with
    a leading replicate axis) replaced by those of ``new`` (the same structure, len(rows) rows)."""
    for name, value in new.items():
        if isinstance(value, dict):
            _replace_rows(out[name], rows, value)
        elif isinstance(value, tuple):
            for a, b in zip(out[name], value):
                a[rows] = b
        elif isinstance(value, list):
            for r, v in zip(rows, value):
                out[name][r] = v
        else:
            out[name][rows] = value


def integrate(key, model, data: dict, config: QuadratureConfig = QuadratureConfig(), progress=None,
              approximation=None) -> QuadratureResult:
    """Quadrature posterior of ``model`` for every replicate of ``data`` (x (S,N,M), w (S,M), y (S,N)).

    ``approximation``: a cheap approximation of the model's per-observation log-likelihood,
    ``loglik(y, x, w, sx, sw) -> (N,)``, for the corrected lattice (``config.exact_stride`` > 1);
    None: the Gaussian approximation for the ``marginal`` model, none for the others (their
    likelihood is evaluated at every node)."""
    config.validate()
    check_quadrature_model(model)
    approx_model = _approximation_model(model, approximation) if config.exact_stride > 1 else None
    S = _check_data(data)
    dtype = jnp.result_type(jnp.asarray(data["x"]).dtype, float)
    dev_data = {k: jnp.asarray(data[k], dtype) for k in ("x", "w", "y")}
    devices = jax.local_devices()
    workers = _workers(config.chain_method, len(devices))
    bs = min(AUTO_BATCH, -(-S // workers)) if config.batch_size == 0 else min(config.batch_size, S)
    if config.chain_method == "sequential":
        bs = 1
    batches = [np.arange(i, min(i + bs, S)) for i in range(0, S, bs)]
    keys = jax.random.split(key, len(batches))
    done = [0]

    def run(args):
        kb, idx, device = args
        dd = dev_data if device is None else {k: jax.device_put(v, device) for k, v in dev_data.items()}
        if model.name == "gaussian":  # the same values as gaussian_logpdf, O(N) per point
            ev = GaussianEvaluator(dd, model.y_noise)
        else:
            ev = Evaluator(model, dd, use_grid=config.exact_likelihood == "grid",
                           node_tolerance=config.likelihood_tolerance)
        if approx_model is None:
            ev_approx = None
        elif approx_model.name == "gaussian":
            ev_approx = GaussianEvaluator(dd, approx_model.y_noise)
        else:
            ev_approx = Evaluator(approx_model, dd)
        out = _integrate_batch(kb, model, dd, idx, config, ev, ev_approx)
        if ev_approx is not None and config.exact_fallback:
            # where the correction's own error keeps a replicate uncertified (the approximation is
            # far from the exact likelihood: heavy noise under a weak prior, M = 1), integrate it
            # again with the exact likelihood at every node; its cost counts both attempts
            redo = np.nonzero(~out["certified"] & ~out["failed"] & (out["correction_error"] > config.tolerance))[0]
            if redo.size:
                again = _integrate_batch(jax.random.fold_in(kb, 1), model, dd, idx[redo], config, ev, None)
                again["n_evaluations"] = again["n_evaluations"] + out["n_evaluations"][redo]
                _replace_rows(out, redo, again)
        out["compile_time"] = getattr(ev, "compile_time", 0.0)
        done[0] += idx.size
        if progress is not None:
            progress(done[0] / S)
        return out

    if workers > 1:
        jobs = [(k, idx, devices[i % len(devices)] if len(devices) > 1 else None)
                for i, (k, idx) in enumerate(zip(keys, batches))]
        with ThreadPoolExecutor(workers) as pool:
            outs = list(pool.map(run, jobs))
    else:
        outs = [run((k, idx, None)) for k, idx in zip(keys, batches)]
    params = param_names()
    cat = lambda name: np.concatenate([o[name] for o in outs])
    return QuadratureResult(
        params=params,
        draws={p: np.concatenate([o["draws"][p] for o in outs]) for p in params},
        marginals={p: tuple(np.concatenate([o["marginals"][p][i] for o in outs]) for i in range(2)) for p in params},
        moments={p: {k: np.concatenate([o["moments"][p][k] for o in outs]) for k in outs[0]["moments"][p]}
                 for p in params},
        log_marginal_likelihood=cat("log_marginal_likelihood"), error_estimate=cat("error_estimate"),
        certified=cat("certified"), n_evaluations=cat("n_evaluations"), grid_step=cat("grid_step"),
        boundary_mass=cat("boundary_mass"), correction_error=cat("correction_error"),
        exact_stride=cat("exact_stride"), failed=cat("failed"), error=sum((o["error"] for o in outs), []),
        compile_time=float(sum(o["compile_time"] for o in outs)),
    )


def posterior_quantiles(result: QuadratureResult, probs=PROBS) -> dict:
    """Posterior quantiles of |σ| per parameter: dict param -> (S, len(probs)) (exact CDF on the fine grid)."""
    probs = np.asarray(probs, float)
    if probs.ndim != 1 or np.any((probs < 0) | (probs > 1)):
        raise ValueError(f"probs must be a 1-D sequence in [0, 1], got {probs!r}")
    out = {}
    for p in result.params:
        edges, cdf = result.marginals[p]
        q = np.full((edges.shape[0], probs.size), np.nan)
        for s in range(edges.shape[0]):
            if np.all(np.isfinite(cdf[s])):
                q[s] = np.exp(cdf_quantiles(edges[s], cdf[s], probs))
        out[p] = q
    return out


def posterior_moments(result: QuadratureResult) -> dict:
    """dict param -> {mean, sd (of |σ|), log_mean, log_sd (of log|σ|)}, each (S,)."""
    return {p: dict(v) for p, v in result.moments.items()}


class Quadrature:
    """The quadrature inference method: ``fit(key, model, data, progress=None) -> Posterior``."""

    name = "quadrature"

    def __init__(self, config: QuadratureConfig | None = None, **options):
        base = config if config is not None else QuadratureConfig()
        if options:
            fields = {f.name for f in dataclasses.fields(QuadratureConfig)}
            unknown = sorted(set(options) - fields)
            if unknown:
                raise ValueError(f"unknown quadrature option(s) {unknown}; fields are {sorted(fields)}")
            base = dataclasses.replace(base, **options)
        self.config = base.validate()

    def fit(self, key, model, data: dict, progress=None):
        from .. import Posterior, StatSpec

        t0 = time.perf_counter()
        res = integrate(key, model, data, self.config, progress)
        wall = time.perf_counter() - t0
        samples = {p: res.draws[p][:, None, :] for p in res.params}
        fit_stats = {name: getattr(res, name) for name, _, _ in FIT_STATS}
        specs = tuple(StatSpec(name, "replicate", kind, desc) for name, kind, desc in FIT_STATS)
        info = dict(dataclasses.asdict(self.config))
        workers = _workers(self.config.chain_method, len(jax.local_devices()))
        info["chain_method_resolved"] = (self.config.chain_method if self.config.chain_method != "parallel"
                                         or workers > 1 else "vectorized")
        info["threads"] = workers
        info["likelihood"] = ("loglik_grid" if _has_loglik_grid() and model.name == "marginal"
                              and self.config.exact_likelihood == "grid" else "lax.map" if model.name == "marginal"
                              else "vmap")
        return Posterior(
            samples=samples, sample_stats={}, fit_stats=fit_stats, stat_specs=specs, failed=res.failed,
            error=list(res.error), inference="quadrature", info=info, independent_draws=True,
            wall_time=wall, compile_time=res.compile_time,
        )


def _has_loglik_grid() -> bool:
    try:
        from ...likelihoods import loglik_grid  # noqa: F401
        return True
    except ImportError:
        return False
