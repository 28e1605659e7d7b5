"""``task=sbc``: simulation-based calibration of one model under one prior (chunked, resumable).

A run (:func:`run_sbc`) fits its replicates chunk by chunk (``sbc.chunk_size`` per compiled
batch); each finished chunk is written to ``chunks/`` at once, so a killed run resumes where it
stopped. One chunk (:func:`sbc_chunk`) is a short list of steps, each a function of the chunk so
far:

1. :func:`simulate_and_fit`: replicates from the true process (``simulate.simulate_replicates``),
   checked (:func:`screen_data`: non-finite simulated data mark a replicate failed), fitted by
   the configured inference method (``inference.get_method(cfg.sampler)``);
2. :func:`screen_draws`: replicates whose fit failed or whose draws cannot be ranked (non-finite,
   constant) are recorded as failed with their reason; the rest are thinned to ``sbc.num_ranks``
   draws (independent draws need no thinning);
3. :func:`evaluate_quantities`: the quantities named in ``sbc.quantities`` (:mod:`noisydot_sbc.quantities`)
   at the truth and at the kept draws; a non-finite value marks the replicate failed;
4. :func:`rank_statistics` (ranks, posterior mean/sd, z-score, contraction: :mod:`noisydot_sbc.sbc`),
   :func:`fit_diagnostics` (what the method declares: :mod:`noisydot_sbc.diagnostics`),
   :func:`degeneracy` (:mod:`noisydot_sbc.identifiability`), with ``sbc.fisher_sims > 0``
   :func:`fisher_information`, and with ``sbc.reference=exact`` :func:`reference` (the
   discrepancy of each fit to the quadrature posterior of the exact model): each returns Dataset
   variables;
5. :func:`chunk_dataset`: the chunk's Dataset (:func:`noisydot_sbc.results.build_sbc_dataset`).

A failed replicate never stops the run: it stays in ``results.nc`` with ``failed`` and ``error``,
and is left out of the ranks' uniformity tests (their ``n_failed`` says how many). Another
per-replicate step is one function ``step(setup, chunk) -> {name: (dims, array)}`` and one line
in :func:`sbc_chunk`.
"""
from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np

from ..models import PARAMS
from . import common
from .common import log

class Setup(NamedTuple):
    """What every chunk of one run shares (built once by :func:`make_setup`)."""

    model: object  # models.Model
    prior: object  # priors.Prior
    method: object  # inference method
    quantities: tuple  # test quantity names, in the order of the results
    num_ranks: int  # L
    chunk_size: int
    num_replicates: int
    seed: int
    root_key: object
    dtype: object
    design: object  # the design config (simulate.simulate_replicates reads it)
    fisher_sims: int
    attrs: dict  # Dataset attributes of every chunk
    reference: object = None  # models.Model whose quadrature posterior is the reference (sbc.reference=exact)
    reference_replicates: int = 0  # > 0: the reference for replicates below this index only


class Chunk(NamedTuple):
    """One chunk's replicates as the steps fill them in (arrays with a leading replicate axis S)."""

    index: int
    replicate_ids: np.ndarray
    data: dict  # x (S, N, M), w (S, M), y (S, N)
    truth: dict  # parameter -> (S,)
    posterior: object  # the method's Posterior, padding dropped
    failures: common.FailureLog
    theta: dict | None = None  # parameter -> (S, L) kept draws, NaN in failed rows
    true_q: dict | None = None  # quantity -> (S,) at the truth
    draws_q: dict | None = None  # quantity -> (S, L) at the kept draws


def make_setup(cfg) -> Setup:
    import jax

    from ..quantities import get_quantities

    prior = common.load_prior(cfg)
    model = common.load_model(cfg, prior, cfg.design.y_noise)
    method = common.inference_method(cfg)
    exact = None
    if str(cfg.sbc.get("reference", "none")) == "exact":
        from ..inference.quadrature import check_quadrature_model

        exact = _exact_model(cfg, prior)
        try:
            check_quadrature_model(exact)
        except ValueError as err:
            raise ValueError(f"sbc.reference=exact needs the exact model's quadrature posterior: {err}") from None
    return Setup(
        model=model, prior=prior, method=method,
        quantities=get_quantities(cfg.sbc.quantities),
        num_ranks=int(cfg.sbc.num_ranks), chunk_size=int(cfg.sbc.chunk_size),
        num_replicates=int(cfg.sbc.num_replicates), seed=int(cfg.seed),
        root_key=jax.random.PRNGKey(int(cfg.seed)), dtype=common.float_dtype(), design=cfg.design,
        fisher_sims=int(cfg.sbc.fisher_sims),
        attrs={"num_ranks": int(cfg.sbc.num_ranks), "config_yaml": common.config_yaml(cfg), "seed": int(cfg.seed),
               "model": str(cfg.model.name), "prior": str(prior.name)},
        reference=exact, reference_replicates=int(cfg.sbc.get("reference_replicates", 0)),
    )


def _exact_model(cfg, prior):
    from ..models import build_model

    return build_model("marginal", prior=prior, y_noise=float(cfg.design.y_noise),
                       shared_w_noise=bool(cfg.design.shared_w_noise))


# ----------------------------------------------------------------------------- one chunk
def sbc_chunk(setup: Setup, index: int, replicate_ids, progress=None):
    """Simulate, fit, rank and diagnose the replicates ``replicate_ids`` (chunk ``index``);
    returns the chunk's Dataset. ``progress``: optional callable(done_fraction) for the fits."""
    chunk = simulate_and_fit(setup, index, np.asarray(replicate_ids), progress)
    chunk = screen_draws(setup, chunk)
    chunk = evaluate_quantities(setup, chunk)
    arrays = rank_statistics(setup, chunk)
    diag_arrays, descriptions = fit_diagnostics(setup, chunk)
    arrays.update(diag_arrays)
    arrays.update(degeneracy(setup, chunk))
    if setup.fisher_sims > 0:
        arrays.update(fisher_information(setup, chunk))
    if setup.reference is not None:
        arrays.update(reference(setup, chunk))
    return chunk_dataset(setup, chunk, arrays, descriptions)


def simulate_and_fit(setup: Setup, index: int, replicate_ids: np.ndarray, progress=None) -> Chunk:
    """Simulate the replicates and fit them in one batch. The last chunk is padded to the common
    chunk size (repeating its last replicate) so the compiled fit is reused; padding is dropped."""
    import jax

    from ..simulate import simulate_replicates

    n = len(replicate_ids)
    padded = np.concatenate([replicate_ids, np.full(setup.chunk_size - n, replicate_ids[-1])]) \
        if n < setup.chunk_size else replicate_ids
    data, truth = simulate_replicates(setup.root_key, padded, setup.design, setup.prior, setup.dtype)
    fit_data, bad_data = screen_data(data)
    fit_key = jax.random.fold_in(jax.random.fold_in(setup.root_key, 2**30 + 1), index)
    posterior = setup.method.fit(fit_key, setup.model, fit_data, progress=progress)
    posterior = posterior._replace(
        samples=common.posterior_draws(posterior, slice(0, n)),
        sample_stats={k: np.asarray(v)[:n] for k, v in posterior.sample_stats.items()},
        fit_stats={k: np.asarray(v)[:n] for k, v in (posterior.fit_stats or {}).items()},
    )
    failures = common.FailureLog.of(posterior, n)
    failures.mark_each(bad_data[:n])
    return Chunk(index, replicate_ids, {k: np.asarray(v)[:n] for k, v in data.items()},
                 {k: np.asarray(v)[:n] for k, v in truth.items()}, posterior, failures)


def screen_data(data: dict) -> tuple[dict, list]:
    """Set aside simulated replicates with non-finite data (e.g. y overflowing in float32): their
    reason per replicate ("" where fine), and the data with each such replicate replaced by a
    copy of the first finite one (so the batch keeps its shape; that fit is discarded)."""
    arrays = {k: np.asarray(v) for k, v in data.items()}
    S = next(iter(arrays.values())).shape[0]
    bad = {k: ~np.isfinite(v.reshape(S, -1)).all(axis=1) for k, v in arrays.items()}
    reasons = [", ".join(f"non-finite simulated {k}" for k in arrays if bad[k][i]) for i in range(S)]
    any_bad = np.array([bool(r) for r in reasons])
    if not any_bad.any():
        return data, reasons
    import jax.numpy as jnp

    good = np.flatnonzero(~any_bad)
    fill = {k: (v[good[0]] if good.size else np.nan_to_num(v[0], nan=1.0, posinf=1.0, neginf=1.0))
            for k, v in arrays.items()}
    return {k: jnp.asarray(np.where(any_bad.reshape((-1,) + (1,) * (v.ndim - 1)), fill[k], v))
            for k, v in arrays.items()}, reasons


def screen_draws(setup: Setup, chunk: Chunk) -> Chunk:
    """Mark failed the replicates whose draws cannot be ranked (non-finite or constant draws, a
    non-finite truth), then keep ``L`` draws of each parameter per replicate: evenly spaced over
    chains and draws for MCMC (:func:`noisydot_sbc.sbc.thin_draws`), the first ``L`` for
    independent draws."""
    from .. import sbc

    f = chunk.failures
    for p in PARAMS:
        f.mark_each(sbc.replicate_problems(chunk.posterior.samples[p], chunk.truth[p]), prefix=f"{p}: ")
    L = setup.num_ranks
    theta = {}
    for p in PARAMS:
        draws = chunk.posterior.samples[p]
        if chunk.posterior.independent_draws:
            kept = draws.reshape(draws.shape[0], -1)[:, :L].astype(float)
            kept[f.failed] = np.nan
        else:
            kept = sbc.thin_draws(draws, L, failed=f.failed)
        theta[p] = kept
    for p in PARAMS:  # the kept draws of a sticky chain can all be equal
        f.mark_each(sbc.replicate_problems(theta[p]), prefix=f"{p} (kept draws): ")
    return chunk._replace(theta=theta)


def evaluate_quantities(setup: Setup, chunk: Chunk) -> Chunk:
    """The test quantities at the truth (S,) and at the kept draws (S, L); a replicate where one
    is not finite is marked failed ("non-finite test quantity <name>")."""
    from .. import quantities

    failed = chunk.failures.failed
    data = dict(chunk.data, y_noise=setup.model.y_noise)
    at_draws = {p: np.where(failed[:, None], 1.0, chunk.theta[p]) for p in PARAMS}  # failed rows: placeholders
    at_truth = {p: np.asarray(chunk.truth[p], dtype=float)[:, None] for p in PARAMS}
    draws_q = quantities.evaluate(setup.quantities, at_draws, data)
    true_q = {q: v[:, 0] for q, v in quantities.evaluate(setup.quantities, at_truth, data).items()}
    for q in setup.quantities:
        bad = ~(np.isfinite(true_q[q]) & np.isfinite(draws_q[q]).all(axis=1))
        chunk.failures.mark(bad, f"non-finite test quantity {q}")
    return chunk._replace(true_q=true_q, draws_q=draws_q)


def rank_statistics(setup: Setup, chunk: Chunk) -> dict:
    """Ranks of the test quantities (random tie-breaking seeded by (seed, chunk)), their posterior
    mean and sd, and the z-score and contraction of each parameter; NaN / rank -1 where failed."""
    from .. import sbc
    from ..identifiability import prior_variances

    failed = chunk.failures.failed
    names = list(setup.quantities)
    rng = np.random.default_rng([setup.seed, chunk.index])
    _, ranks = sbc.rank_quantities(rng, {q: chunk.true_q[q] for q in names}, chunk.draws_q, failed=failed)
    mean_sd = [sbc.posterior_mean_sd(chunk.draws_q[q], failed=failed) for q in names]
    z, contraction = zip(*(sbc.zscore_contraction(chunk.truth[p], chunk.theta[p],
                                                  prior_variances(getattr(setup.prior, p))[0], failed=failed)
                           for p in PARAMS))
    out = {
        "true": np.stack([np.where(np.isfinite(chunk.true_q[q]), chunk.true_q[q], np.nan) for q in names], axis=1),
        "rank": ranks,
        "posterior_mean": np.stack([m for m, _ in mean_sd], axis=1),
        "posterior_sd": np.stack([s for _, s in mean_sd], axis=1),
        "z_score": np.stack(z, axis=1),
        "contraction": np.stack(contraction, axis=1),
    }
    if "log_lik" in names:
        with np.errstate(invalid="ignore"):  # failed rows may hold NaN
            gap = chunk.true_q["log_lik"] - np.median(chunk.draws_q["log_lik"], axis=1)
        out["true_params_log_lik_gap"] = (("replicate",), np.where(failed, np.nan, gap))
    return out


def fit_diagnostics(setup: Setup, chunk: Chunk) -> tuple[dict, dict]:
    """The diagnostics of the statistics the inference method declares, the share of the batch's
    wall time per replicate, and the draws kept for storage (per chain, evenly spaced); and the
    description of each diagnostic (stored as variable attributes, read by the plots)."""
    from .. import diagnostics, results

    failed = chunk.failures.failed
    posterior = chunk.posterior._replace(failed=failed)
    diag = diagnostics.compute_diagnostics(posterior, params=list(PARAMS))
    out = {k: (v if k in results.SCHEMA else (dims, v)) for k, (dims, v) in diag.variables().items()}
    steps = diag["n_steps"] if "n_steps" in diag else np.zeros(len(failed))
    out["wall_time_share"] = diagnostics.wall_time_share(steps, float(posterior.wall_time))
    samples = posterior.samples
    n_chain, n_draw = samples[PARAMS[0]].shape[1:3]
    idx = np.linspace(0, n_draw - 1, max(1, setup.num_ranks // n_chain)).round().astype(int)
    stored = np.stack([samples[p][:, :, idx] for p in PARAMS], axis=-1)
    out["draws"] = np.where(failed[:, None, None, None], np.nan, stored)
    return out, diag.attrs()


def degeneracy(setup: Setup, chunk: Chunk) -> dict:
    """Posterior degeneracy per replicate: correlation of the logs, multimodality, prior-dominated
    parameters, log-scale contraction (:func:`noisydot_sbc.identifiability.posterior_degeneracy_batch`)."""
    from ..identifiability import posterior_degeneracy_batch

    failed = chunk.failures.failed
    safe = {p: np.where(failed[:, None, None], 1.0, chunk.posterior.samples[p]) for p in PARAMS}
    res = posterior_degeneracy_batch(safe, setup.prior, true={p: np.abs(chunk.truth[p]) for p in PARAMS})
    nan_if_failed = lambda a: np.where(failed, np.nan, np.asarray(a, dtype=float))
    return {
        "corr_log": (("replicate",), nan_if_failed(res["corr_log"])),
        "multimodal": (("replicate",), np.asarray(res["multimodal"], dtype=bool) & ~failed),
        "prior_dominated": (("replicate", "parameter"),
                            np.stack([np.asarray(res["prior_dominated"][p], dtype=bool) & ~failed for p in PARAMS], 1)),
        "contraction_log": (("replicate", "parameter"),
                            np.stack([nan_if_failed(res["contraction_log"][p]) for p in PARAMS], 1)),
    }


def fisher_information(setup: Setup, chunk: Chunk) -> dict:
    """Expected Fisher information of (log σ_x, log σ_w) at each replicate's true values (a
    property of the simulated design, whatever the fit did; NaN where it cannot be computed)."""
    import jax

    from ..identifiability import expected_fisher_information

    S = len(chunk.replicate_ids)
    cond, weak = np.full(S, np.nan), np.full((S, len(PARAMS)), np.nan)
    for i in range(S):
        k = jax.random.fold_in(jax.random.fold_in(setup.root_key, 2**30 + 2), chunk.index * 100_000 + i)
        try:
            res = expected_fisher_information(
                k, chunk.data["x"][i], chunk.data["w"][i], abs(float(chunk.truth["x_noise_lvl"][i])),
                abs(float(chunk.truth["w_noise_lvl"][i])), y_noise=setup.model.y_noise, num_sims=setup.fisher_sims)
        except ValueError as err:
            chunk.failures.mark(np.arange(S) == i, f"Fisher information: {err}")
            continue
        cond[i] = float(res.condition_number)
        weak[i] = np.asarray(res.ridge_direction, dtype=float)
    return {"fisher_condition_number": (("replicate",), cond),
            "fisher_weakest_direction": (("replicate", "parameter"), weak)}


def reference(setup: Setup, chunk: Chunk) -> dict:
    """Discrepancy of each fitted posterior (all its draws) to the exact one: the quadrature
    posterior (:func:`noisydot_sbc.inference.quadrature.integrate`) of the exact (marginal) model
    for the same replicate's data (:func:`noisydot_sbc.inference.reference.reference_discrepancy`:
    W1 and KL on the log scale, median shift in exact-posterior sds, sd ratio), dims (replicate,
    parameter); ``ref_certified``: the reference met its error tolerance. Failed replicates (and
    those whose reference failed) stay NaN, and their reference is not computed; so do replicates
    from ``sbc.reference_replicates`` on, when it is > 0."""
    import jax

    from ..inference.quadrature import QuadratureConfig, integrate
    from ..inference.reference import METRICS, reference_discrepancy

    failed = chunk.failures.failed
    S, P = len(failed), len(PARAMS)
    out = {f"ref_{m}": np.full((S, P), np.nan) for m in METRICS}
    certified = np.zeros(S, bool)
    wanted = ~failed
    limit = setup.reference_replicates
    if limit > 0:
        wanted &= np.asarray(chunk.replicate_ids) < limit
    ok = np.flatnonzero(wanted)
    if ok.size:
        key = jax.random.fold_in(jax.random.fold_in(setup.root_key, 2**30 + 3), chunk.index)
        data = {k: np.asarray(chunk.data[k], dtype=np.float64)[ok] for k in ("x", "w", "y")}
        exact = integrate(key, setup.reference, data, QuadratureConfig(num_draws=1))
        draws = {p: np.asarray(chunk.posterior.samples[p])[ok] for p in PARAMS}
        disc = reference_discrepancy(draws, exact)
        for m in METRICS:
            out[f"ref_{m}"][ok] = getattr(disc, m)
        certified[ok] = np.asarray(exact.certified, bool) & ~np.asarray(exact.failed, bool)
        if exact.failed.any():
            log.warning("exact reference failed for %d replicate(s) of chunk %d (their ref_* are NaN): %s",
                        int(exact.failed.sum()), chunk.index, sorted({e for e in exact.error if e}))
    arrays = {k: (("replicate", "parameter"), v) for k, v in out.items()}
    arrays["ref_certified"] = (("replicate",), certified)
    return arrays


def chunk_dataset(setup: Setup, chunk: Chunk, arrays: dict, descriptions: dict | None = None):
    """The chunk's Dataset: the step variables plus ``failed`` / ``error`` and the run attributes;
    ``descriptions``: variable -> attributes (e.g. ``Diagnostics.attrs()``)."""
    from .. import results

    arrays = dict(arrays, failed=chunk.failures.failed, error=np.array(chunk.failures.error, dtype=object))
    post = chunk.posterior
    attrs = dict(setup.attrs, inference=str(post.inference), chain_method=str((post.info or {}).get("chain_method", "")),
                 compile_time=float(post.compile_time))
    coords = {"quantity": list(setup.quantities), "parameter": list(PARAMS),
              "replicate": np.asarray(chunk.replicate_ids)}
    return results.build_sbc_dataset(arrays, coords=coords, attrs=attrs, descriptions=descriptions)


# ----------------------------------------------------------------------------- the run
def run_sbc(cfg) -> dict:
    """SBC of ``cfg.model`` under ``cfg.prior``; resumable and chunked; writes ``results.nc`` and
    the plots into the run folder; returns the headline figures."""
    from .. import results
    from ..rundir import prepare

    with prepare(cfg) as out:
        chunks_dir = out / "chunks"
        setup = make_setup(cfg)
        S, C = setup.num_replicates, setup.chunk_size
        n_chunks = -(-S // C)
        done = results.finished_chunks(chunks_dir)
        if done:
            log.info("resuming: %d of %d chunks already finished in %s", len(done & set(range(n_chunks))), n_chunks,
                     chunks_dir)
        with common.ProgressBar(cfg, S, initial=sum(min(C, S - i * C) for i in done if i < n_chunks),
                          desc=f"SBC {cfg.model.name}/{setup.prior.name}") as bar:
            for ci in (i for i in range(n_chunks) if i not in done):
                ids = np.arange(ci * C, min((ci + 1) * C, S))
                results.write_chunk(sbc_chunk(setup, ci, ids, progress=bar.within(len(ids))), chunks_dir, ci)
                bar.advance(len(ids))
        ds = results.merge_chunks(chunks_dir, expected=n_chunks)
        ds, tests = add_uniformity_tests(ds)
        path = results.save_dataset(ds, out / "results.nc")
        save_plots(ds, out)
    ok = ~ds["failed"].values.astype(bool)
    summary = {
        "results": str(path),
        "replicates": S,
        "failed": int((~ok).sum()),
        "failure_reasons": _reasons(ds),
        "divergent_fits": int((ds["diverging"].values[ok] > 0).sum()) if "diverging" in ds else None,
        "ecdf_p": {q: float(p) for q, p in zip(ds["quantity"].values, tests["ecdf_p"])},
    }
    log.info("SBC done: %s", json.dumps(summary))
    return summary


def _reasons(ds) -> dict:
    out: dict = {}
    for f, e in zip(ds["failed"].values, ds["error"].values):
        if f:
            out[str(e) or "unknown"] = out.get(str(e) or "unknown", 0) + 1
    return out


def add_uniformity_tests(ds):
    """Add the uniformity tests of the ranks (:func:`noisydot_sbc.sbc.uniformity_tests`) over the
    replicates that did not fail, one value per quantity; says how many were left out and why."""
    from .. import results, sbc

    failed = ds["failed"].values.astype(bool)
    Q = ds.sizes["quantity"]
    if failed.any():
        log.warning("%d of %d replicates failed and are left out of the uniformity tests: %s", int(failed.sum()),
                    failed.size, json.dumps(_reasons(ds)))
    if failed.all():
        log.error("every replicate failed: no ranks to test (see the variable 'error' in results.nc)")
        tests = {k: np.full(Q, np.nan) for k in ("chi2", "chi2_p", "ecdf_gamma", "ecdf_p")}
        tests.update(chi2_defined=np.zeros(Q, bool), n_replicates=np.zeros(Q, np.int64),
                     n_failed=np.full(Q, failed.size, np.int64))
    else:
        tests = sbc.uniformity_tests(ds["rank"].values, int(ds.attrs["num_ranks"]), failed=failed)
    return results.add_variables(ds, {k: (("quantity",), np.asarray(v)) for k, v in tests.items()}), tests


def save_plots(ds, out) -> None:
    """ECDF difference, rank histograms, z-score vs contraction, diagnostics (PNG) in ``out``."""
    from .. import plots

    if ds["failed"].values.astype(bool).all():
        log.warning("no plots: every replicate failed")
        return
    figs = {
        "ecdf_diff.png": lambda: plots.plot_ecdf(ds, difference=True, split_divergent=True),
        "rank_hist.png": lambda: plots.plot_rank_histograms(ds),
        "zscore_contraction.png": lambda: plots.plot_zscore_contraction(ds),
        "diagnostics.png": lambda: plots.plot_diagnostics(ds),
    }
    if not plots.has_diagnostics(ds):
        log.info("no diagnostics.png: the inference method declares no statistics to plot")
        figs.pop("diagnostics.png")
    if "ref_w1_log" in ds:
        figs["reference.png"] = lambda: plots.plot_reference(ds)
    for name, make in figs.items():
        make().savefig(out / name, dpi=110, bbox_inches="tight")
