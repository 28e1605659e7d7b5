"""The batched driver: runs any step kernel (:mod:`noisydot_sbc.inference.kernel`) on every
replicate of a batch as ONE compiled computation.

* Modes (``chain_method``): ``sequential`` (``lax.map`` over replicates, each with its own loop),
  ``vectorized`` (all replicate-chains in one step-wise loop), ``parallel`` (replicates sharded
  over ``jax.devices()`` with ``shard_map``, vectorised per device; S padded to a multiple of the
  device count, padding discarded), ``auto`` (see :func:`resolve_chain_method`).
* Compiled executables are cached on (model, kernel factory, schedule, data shapes/dtypes, kept
  sites, mode, devices, x64, progress on/off): a second call with the same shapes does not recompile.
* Failures are data: a replicate with no finite start or with non-finite draws gets
  ``failed=True``, NaN draws and a reason; the rest of the batch is unaffected.
* Run length: a fixed ``num_samples``, or (``Schedule.target_ess``) a pilot of ``num_samples``
  then each replicate continued to the length its pilot ESS predicts (see :func:`run_chains`).
* Progress: an optional ``progress(done_fraction)`` callback, called from inside the compiled
  loop every ``progress_every`` steps (default ``PROGRESS_EVERY``) (``jax.debug.callback``); it does not change the draws.

The driver knows the kernel only through :class:`~noisydot_sbc.inference.kernel.Kernel`.
"""
from __future__ import annotations

import os
import re
import threading
import time
from functools import partial
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .kernel import StatSpec
from .potential import Potential, build_potential, constrain, kept_indices, model_cache_key, resolve_keep_sites

__all__ = ["CHAIN_METHODS", "Schedule", "ChainResult", "run_chains", "find_init", "resolve_chain_method",
           "configure_host_devices", "cache_info", "clear_cache", "check_data", "INIT_ATTEMPTS", "INIT_RADIUS",
           "PROGRESS_EVERY"]

CHAIN_METHODS = ("sequential", "vectorized", "parallel", "auto")
INIT_RADIUS = 1.0  # chains start uniformly within ±1 of the prior median in unconstrained space
INIT_ATTEMPTS = 100
PROGRESS_EVERY = 1024  # steps of the compiled loop between two progress reports (each costs a host round trip)
ESS_MARGIN = 1.2  # continue to 1.2x the length the pilot predicts for the target ESS


class Schedule(NamedTuple):
    """How long chains run: kernel-independent. ``target_ess``/``max_samples``: see :func:`run_chains`."""

    num_warmup: int
    num_samples: int
    num_chains: int
    thinning: int = 1
    target_ess: Optional[int] = None
    max_samples: Optional[int] = None

    @property
    def num_draws(self) -> int:
        return -(-self.num_samples // self.thinning)

    @property
    def sample_cap(self) -> int:
        if self.target_ess is None:
            return self.num_samples
        return self.max_samples if self.max_samples is not None else 10 * self.num_samples


class ChainResult(NamedTuple):
    samples: dict  # kept site -> (S, chain, draw, *site_shape) constrained, NaN where failed
    sample_stats: dict  # the kernel's declared draw stats -> (S, chain, draw)
    stat_specs: tuple  # the kernel's StatSpec
    chain_method: str
    chain_method_reason: str
    wall_time: float  # seconds of the sampling call(s), compile excluded
    compile_time: float
    failed: np.ndarray  # (S,) bool
    error: list  # (S,) str
    n_grad: np.ndarray  # (S, chain) gradient evaluations of the completed iterations, warm-up included
    num_samples: np.ndarray  # (S,) post-warm-up iterations each replicate's chains ran


# --------------------------------------------------------------------------------------------
# progress: a stable trampoline baked into executables; the current reporter is set per call
# --------------------------------------------------------------------------------------------
class _Reporter:
    """Sums the completed iterations each block reports; calls ``fn(fraction)`` when it grows."""

    def __init__(self, fn, planned):
        self.fn, self.planned, self.done, self.last = fn, max(float(planned), 1.0), {}, 0.0
        self.lock = threading.Lock()

    def restart(self, planned):
        with self.lock:
            self.planned, self.done = max(float(planned), 1.0), {}

    def update(self, block_id, done_its):
        with self.lock:
            self.done[int(block_id)] = float(done_its)
            frac = min(1.0, sum(self.done.values()) / self.planned)
            if frac > self.last:
                self.last = frac
                self.fn(frac)


_REPORTER: dict = {"current": None}


def _progress_trampoline(block_id, done_its):
    rep = _REPORTER["current"]
    if rep is not None:
        rep.update(block_id, done_its)


# --------------------------------------------------------------------------------------------
# one block of replicates: init, loop, record
# --------------------------------------------------------------------------------------------
def find_init(key, data, pot: Potential):
    """Uniform within ±INIT_RADIUS of the prior median in unconstrained space (dispersed starts in the
    region the prior believes in, not far in its tails where the exact likelihood's quadrature needs
    its slow robust tiers), retried until potential and gradient are finite. Returns (z, ok)."""

    def attempt(k):
        z = pot.z_center + jax.random.uniform(k, (pot.dim,), pot.dtype, -INIT_RADIUS, INIT_RADIUS)
        pe, g = pot.value_and_grad(z, data)
        return z, jnp.isfinite(pe) & jnp.all(jnp.isfinite(g))

    def body(c):
        i, k, _, _ = c
        k, sub = jax.random.split(k)
        z, ok = attempt(sub)
        return i + 1, k, z, ok

    z0 = jnp.zeros((pot.dim,), pot.dtype)
    _, _, z, ok = lax.while_loop(lambda c: (~c[3]) & (c[0] < INIT_ATTEMPTS), body, (0, key, z0, False))
    return z, ok


def _identity(x):
    return x


def _block_setup(keys, data, pot, kernel_factory, sched):
    C = sched.num_chains

    def per_rep_keys(k):
        k_init, k_run = jax.random.split(k)
        return jax.random.split(k_init, C), jax.random.split(k_run, C)

    k_init, k_run = jax.vmap(per_rep_keys)(keys)  # (B, C) keys
    data = jax.vmap(pot.prepare)(data)  # data-only terms, computed once per replicate
    kernel = kernel_factory(pot, sched.num_warmup, jax.tree.map(lambda a: a[0], data))
    return kernel, k_init, k_run, data


def _block_init(kernel, k_init, k_run, data, pot):
    pack = kernel.pack or _identity
    over_chains = lambda f: jax.vmap(jax.vmap(f, in_axes=(0, None)), in_axes=(0, 0))
    z0, init_ok = over_chains(partial(find_init, pot=pot))(k_init, data)
    state = jax.vmap(jax.vmap(lambda k, z, d: pack(kernel.init(k, z, d)), in_axes=(0, 0, None)))(k_run, z0, data)
    return state, init_ok


def _block_loop(kernel, k_run, data, state, buf, n_lf, total, sched, keep_idx, progress_id, freeze,
                progress_every=PROGRESS_EVERY):
    """Step every chain until each has ``total`` iterations (an int, or (B,) per replicate).

    ``buf`` (B, C, slots + 1, K + n_stats): kept coordinates then the declared stats, one scatter
    per step; the last slot is the dump for steps that record nothing. ``freeze``: a chain that
    reached its total stops (its state is kept), so the run can be continued exactly."""
    step_fn = kernel.step_packed if kernel.step_packed is not None else kernel.step
    unpack = kernel.unpack or _identity
    step_b = jax.vmap(jax.vmap(step_fn, in_axes=(0, 0, None)), in_axes=(0, 0, 0))
    iteration_b = jax.vmap(jax.vmap(lambda st: kernel.iteration(unpack(st))))
    record_b = jax.vmap(jax.vmap(kernel.record))
    cost_b = jax.vmap(jax.vmap(kernel.cost))
    B, C = k_run.shape[:2]
    dump = buf.shape[2] - 1
    dt = buf.dtype
    b_ix = jnp.arange(B)[:, None]
    c_ix = jnp.arange(C)[None, :]
    tot = total if isinstance(total, int) else total[:, None]

    def cond(c):
        return jnp.any(iteration_b(c[0]) < tot)

    def body(c):
        st, buf, n_lf = c[:3]
        new, info = step_b(k_run, st, data)
        if freeze:
            active = iteration_b(st) < tot
            new = jax.tree.map(lambda a, b: jnp.where(active.reshape(active.shape + (1,) * (a.ndim - 2)), a, b),
                               new, st)
        n_lf = n_lf + jnp.where(info.done & (info.it < tot), cost_b(info), 0)
        j = info.it - sched.num_warmup
        rec = info.done & (j >= 0) & (info.it < tot) & (j % sched.thinning == 0)
        slot = jnp.where(rec, j // sched.thinning, dump)
        stats = record_b(info)
        row = jnp.concatenate([info.z[..., keep_idx]] + [stats[s.name].astype(dt)[..., None] for s in kernel.stats],
                              axis=-1)
        out = (new, buf.at[b_ix, c_ix, slot].set(row), n_lf)
        if progress_id is not None:
            n = c[3] + 1

            def report(_):
                done = jnp.sum(jnp.minimum(iteration_b(new), tot))
                jax.debug.callback(_progress_trampoline, progress_id[0], done)
                return None

            lax.cond(n % progress_every == 0, report, lambda _: None, None)
            out = out + (n,)
        return out

    carry = (state, buf, n_lf) + ((jnp.zeros((), jnp.int32),) if progress_id is not None else ())
    carry = lax.while_loop(cond, body, carry)
    if progress_id is not None:
        jax.debug.callback(_progress_trampoline, progress_id[0], jnp.sum(jnp.minimum(iteration_b(carry[0]), tot)))
    return carry[:3]


def _unpack_buffer(buf, kernel, K):
    out = {"z": buf[..., :K]}
    for i, spec in enumerate(kernel.stats):
        v = buf[..., K + i]
        if spec.kind == "b":
            v = v > 0.5
        elif spec.kind == "i":
            v = v.astype(jnp.int32)
        out[spec.name] = v
    return out


def _new_buffer(B, C, slots, K, kernel, dtype):
    return jnp.full((B, C, slots + 1, K + len(kernel.stats)), jnp.nan, dtype)


def _block_fixed(keys, data, ids, pot, kernel_factory, sched, progress):
    """Fixed length: init and ``num_warmup + num_samples`` iterations, in one loop."""
    kernel, k_init, k_run, data = _block_setup(keys, data, pot, kernel_factory, sched)
    state, init_ok = _block_init(kernel, k_init, k_run, data, pot)
    keep_idx = kept_indices(pot)
    B, C = k_run.shape[:2]
    nd = sched.num_draws
    buf = _new_buffer(B, C, nd, keep_idx.size, kernel, pot.dtype)
    total = sched.num_warmup + sched.num_samples
    state, buf, n_lf = _block_loop(kernel, k_run, data, state, buf, jnp.zeros((B, C), jnp.int32), total, sched,
                                   keep_idx, ids if progress else None, freeze=False,
                                   progress_every=max(1, progress))
    out = _unpack_buffer(buf[:, :, :nd], kernel, keep_idx.size)
    out["init_ok"] = init_ok
    out["n_leapfrog"] = n_lf
    return out


def _block_pilot(keys, data, ids, pot, kernel_factory, sched, progress):
    """Adaptive length, phase 1: init, warm-up and the pilot; returns the state to continue from."""
    kernel, k_init, k_run, data = _block_setup(keys, data, pot, kernel_factory, sched)
    state, init_ok = _block_init(kernel, k_init, k_run, data, pot)
    keep_idx = kept_indices(pot)
    B, C = k_run.shape[:2]
    slots = -(-sched.sample_cap // sched.thinning)
    buf = _new_buffer(B, C, slots, keep_idx.size, kernel, pot.dtype)
    total = sched.num_warmup + sched.num_samples
    state, buf, n_lf = _block_loop(kernel, k_run, data, state, buf, jnp.zeros((B, C), jnp.int32), total, sched,
                                   keep_idx, ids if progress else None, freeze=True,
                                   progress_every=max(1, progress))
    return state, buf, n_lf, init_ok


def _block_continue(keys, data, ids, state, buf, n_lf, totals, pot, kernel_factory, sched, progress):
    """Adaptive length, phase 2: continue the same chains to per-replicate totals (B,)."""
    kernel, _, k_run, data = _block_setup(keys, data, pot, kernel_factory, sched)
    keep_idx = kept_indices(pot)
    state, buf, n_lf = _block_loop(kernel, k_run, data, state, buf, n_lf, totals, sched, keep_idx,
                                   ids if progress else None, freeze=True, progress_every=max(1, progress))
    out = _unpack_buffer(buf[:, :, :-1], kernel, keep_idx.size)
    out["n_leapfrog"] = n_lf
    return out


def _distribute(block, method: str, n_dev: int):
    """Map ``block`` (pytrees with a leading replicate axis in and out) over replicates per mode."""
    if method == "vectorized":
        return block
    if method == "sequential":

        def one(args):
            out = block(*jax.tree.map(lambda a: a[None], args))
            return jax.tree.map(lambda a: a[0], out)

        return lambda *args: lax.map(one, args)
    if method == "parallel":
        devices = jax.devices()[:n_dev]
        if os.environ.get("NOISYDOT_PARALLEL_IMPL", "shard_map") == "shard_map":
            from jax.sharding import Mesh, PartitionSpec as P

            mesh = Mesh(np.array(devices), ("rep",))

            def run(*args):
                f = jax.shard_map(block, mesh=mesh, in_specs=tuple(P("rep") for _ in args), out_specs=P("rep"),
                                  check_vma=False)
                return f(*args)

            return run
        mapped = jax.pmap(block, devices=devices)

        def run_pmap(*args):
            split = lambda a: a.reshape((n_dev, a.shape[0] // n_dev) + a.shape[1:])
            out = mapped(*jax.tree.map(split, args))
            return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), out)

        return run_pmap
    raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {method!r}")


def _with_constrain(fn, pot):
    def run(*args):
        out = fn(*args)
        samples = constrain(out.pop("z"), pot)
        return samples, out

    return run


# --------------------------------------------------------------------------------------------
# devices, mode choice, cache
# --------------------------------------------------------------------------------------------
def configure_host_devices(k: int) -> int:
    """Ask XLA for ``k`` host (CPU) devices, so ``parallel`` can shard replicates over CPU cores.

    Must run before JAX initialises its backends (before the first computation). If they are
    already initialised with fewer than ``k`` CPU devices, raises RuntimeError. Returns ``k``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    try:
        from jax._src import xla_bridge

        initialised = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # private API moved: assume initialised, check devices
        initialised = True
    if initialised:
        have = len(jax.devices("cpu"))
        if have < k:
            raise RuntimeError(
                f"JAX is already initialised with {have} CPU device(s); configure_host_devices({k}) must be "
                "called before the first JAX computation (or set XLA_FLAGS="
                f"--xla_force_host_platform_device_count={k} before starting Python)"
            )
        return k
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={k}".strip()
    return k


def resolve_chain_method(method: str, num_replicates: int) -> tuple[str, str]:
    """The mode to use and why. ``auto``: ``parallel`` when there are several devices of the
    default backend and at least as many replicates, else ``vectorized`` (measured fastest on
    CPU and GPU, see docs/engine.md)."""
    if method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {method!r}")
    if method != "auto":
        return method, "requested"
    n_dev = len(jax.devices())
    if n_dev > 1 and num_replicates >= n_dev:
        return "parallel", f"{n_dev} {jax.default_backend()} devices: shard replicates, vectorised per device"
    return "vectorized", f"single {jax.default_backend()} device: step-wise vectorised loop"


_CACHE: dict = {}
_CACHE_STATS = {"hits": 0, "misses": 0}


def cache_info() -> dict:
    """Hits/misses of the compiled-executable cache and its size."""
    return dict(_CACHE_STATS, size=len(_CACHE))


def clear_cache() -> None:
    _CACHE.clear()
    _CACHE_STATS.update(hits=0, misses=0)


def _compiled(cache_key, build, args):
    """(executable, compile seconds); ``build() -> (fn, extra)``, compiled on ``args``."""
    entry = _CACHE.get(cache_key)
    if entry is not None:
        _CACHE_STATS["hits"] += 1
        return entry, 0.0
    _CACHE_STATS["misses"] += 1
    t0 = time.perf_counter()
    fn, extra = build()
    compiled = jax.jit(fn).lower(*args).compile()
    entry = _CACHE[cache_key] = (compiled, extra)
    return entry, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def check_data(data) -> int:
    """Number of replicates S of ``data`` (dict of numeric finite arrays with a leading axis S)."""
    if not isinstance(data, dict) or not data:
        raise ValueError("data must be a non-empty dict of arrays with a leading replicate axis")
    sizes = set()
    for name, value in data.items():
        arr = np.asarray(value)
        if arr.ndim < 1:
            raise ValueError(f"data[{name!r}] must have a leading replicate axis, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"data[{name!r}] must be numeric, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"data[{name!r}] contains non-finite values")
        sizes.add(arr.shape[0])
    if len(sizes) != 1:
        raise ValueError(f"data arrays disagree on the number of replicates (leading axis): {sorted(sizes)}")
    (s,) = sizes
    if s < 1:
        raise ValueError("data has zero replicates")
    return s


def _check_schedule(sched: Schedule) -> None:
    for name in ("num_warmup", "num_samples", "num_chains", "thinning"):
        v = getattr(sched, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"schedule.{name} must be an integer, got {v!r}")
    if sched.num_warmup < 0 or sched.num_samples < 1 or sched.num_chains < 1 or sched.thinning < 1:
        raise ValueError(f"schedule: num_warmup >= 0, num_samples, num_chains, thinning >= 1; got {sched}")


def _pilot_lengths(z_pilot, ok, sched: Schedule) -> np.ndarray:
    """Post-warm-up iterations per replicate for bulk ESS >= target: the pilot's ESS (minimum over
    kept coordinates; rank-normalised, so the same in unconstrained and constrained space) scaled
    linearly in the run length, x ESS_MARGIN, within [num_samples, sample cap]."""
    from ..diagnostics import rhat_ess

    S, _, nd, K = z_pilot.shape
    ess = np.full(S, np.inf)
    skip = ~ok
    for k in range(K):
        _, bulk, _ = rhat_ess(z_pilot[..., k], skip=skip)
        ess = np.minimum(ess, np.where(skip, np.inf, bulk))
    n0 = sched.num_samples
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.ceil(n0 * ESS_MARGIN * sched.target_ess / ess)
    need = np.where(np.isfinite(need) & ~skip, need, n0)
    need = np.where(ess >= sched.target_ess, n0, need)
    return np.clip(need, n0, sched.sample_cap).astype(np.int64)


def run_chains(key, model, data: dict, kernel_factory: Callable, schedule: Schedule, chain_method: str = "auto",
               *, keep_sites=None, drop_sites=None, progress: Optional[Callable] = None,
               progress_every: int = PROGRESS_EVERY) -> ChainResult:
    """Run ``kernel_factory(potential, num_warmup, data_proto) -> Kernel`` on every replicate of ``data``.

    ``model``: a NumPyro model callable or a :class:`noisydot_sbc.models.Model`; ``data``: dict of
    arrays with a leading replicate axis S; ``kernel_factory``: hashable (it is part of the cache key).
    Stored sites: ``keep_sites`` (default: the model's parameters, :data:`noisydot_sbc.models.PARAMS`),
    or every site but ``drop_sites``.

    With ``schedule.target_ess`` set, the run has two phases: warm-up + a pilot of
    ``num_samples`` iterations; host-side bulk ESS per replicate; then the same chains (same
    random streams, chains stopped exactly at their length) continue to the length each replicate
    needs (at most ``sample_cap``). Each replicate then returns ``num_draws`` draws per chain, evenly
    spaced over its own run, and ``num_samples[s]`` says how many iterations that run had.
    """
    _check_schedule(schedule)
    if isinstance(progress_every, bool) or not isinstance(progress_every, (int, np.integer)) or progress_every < 1:
        raise ValueError(f"progress_every must be a positive integer, got {progress_every!r}")
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be a callable(fraction) or None, got {type(progress).__name__}")
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {chain_method!r}")
    S = check_data(data)
    data = {k: jnp.asarray(v) for k, v in data.items()}
    method, why = resolve_chain_method(chain_method, S)
    n_dev = len(jax.devices()) if method == "parallel" else 1
    S_pad = -(-S // n_dev) * n_dev
    if S_pad != S:  # pad by repeating the last replicate; padded results are discarded
        data = {k: jnp.concatenate([v, jnp.repeat(v[-1:], S_pad - S, axis=0)]) for k, v in data.items()}
    keys = jax.random.split(key, S_pad)
    ids = jnp.arange(S_pad, dtype=jnp.int32)
    shapes = tuple(sorted((k, v.shape, str(v.dtype)) for k, v in data.items()))
    if drop_sites is None:
        keep_sites = resolve_keep_sites(model, keep_sites)
    sites = ("drop", tuple(drop_sites)) if drop_sites is not None else ("keep", keep_sites)
    base_key = (model_cache_key(model), kernel_factory, schedule, shapes, sites, method, n_dev, str(keys.dtype),
                bool(jax.config.jax_enable_x64), int(progress_every) if progress is not None else 0)
    pot_box = {}

    def potential():
        if "pot" not in pot_box:
            pot_box["pot"] = build_potential(model, data, keep_sites=keep_sites, drop_sites=drop_sites)
        return pot_box["pot"]

    reporter = None
    C = schedule.num_chains
    if progress is not None:
        # adaptive length: planned at the cap until the pilot says more (the fraction only grows)
        reporter = _Reporter(progress, S_pad * C * (schedule.num_warmup + schedule.sample_cap))
    _REPORTER["current"] = reporter
    try:
        if schedule.target_ess is None:
            def build():
                pot = potential()
                block = partial(_block_fixed, pot=pot, kernel_factory=kernel_factory, sched=schedule,
                                progress=int(progress_every) if progress is not None else 0)
                return _with_constrain(_distribute(block, method, n_dev), pot), (pot, _stat_specs(pot, kernel_factory, schedule, data))

            (exe, (pot, specs)), compile_time = _compiled(base_key + ("fixed",), build, (keys, data, ids))
            t0 = time.perf_counter()
            samples, stats = jax.block_until_ready(exe(keys, data, ids))
            wall_time = time.perf_counter() - t0
            samples = {k: np.array(v[:S]) for k, v in samples.items()}
            stats = {k: np.asarray(v)[:S] for k, v in stats.items()}
            num_samples = np.full(S, schedule.num_samples, np.int64)
        else:
            samples, stats, num_samples, wall_time, compile_time, (pot, specs) = _run_adaptive(
                keys, data, ids, S, S_pad, base_key, potential, kernel_factory, schedule, method, n_dev, reporter,
                progress_every)
    finally:
        _REPORTER["current"] = None

    init_ok = stats.pop("init_ok")
    n_grad = stats.pop("n_leapfrog")
    failed = np.zeros(S, bool)
    error = [""] * S
    for s in range(S):
        why_s = []
        if not init_ok[s].all():
            why_s.append(f"no finite initial point in {INIT_ATTEMPTS} attempts for chain(s) "
                         f"{np.flatnonzero(~init_ok[s]).tolist()}")
        bad = [k for k, v in samples.items() if not np.all(np.isfinite(v[s]))]
        if bad:
            why_s.append(f"non-finite draws of {bad}")
        if why_s:
            failed[s] = True
            error[s] = "; ".join(why_s)
            for v in samples.values():
                v[s] = np.nan
    sample_stats = {spec.name: stats[spec.name] for spec in specs}
    return ChainResult(samples, sample_stats, specs, method, why, wall_time, compile_time, failed, error, n_grad,
                       num_samples)


def _stat_specs(pot, kernel_factory, schedule, data) -> tuple:
    proto = jax.eval_shape(lambda d: pot.prepare(jax.tree.map(lambda a: a[0], d)), data)
    return tuple(kernel_factory(pot, schedule.num_warmup, proto).stats)


def _run_adaptive(keys, data, ids, S, S_pad, base_key, potential, kernel_factory, sched, method, n_dev, reporter,
                  progress_every):
    progress_on = int(progress_every) if reporter is not None else 0
    
    def build_pilot():
        pot = potential()
        block = partial(_block_pilot, pot=pot, kernel_factory=kernel_factory, sched=sched, progress=progress_on)
        return _distribute(block, method, n_dev), (pot, _stat_specs(pot, kernel_factory, sched, data))

    (exe1, (pot, specs)), ct1 = _compiled(base_key + ("pilot",), build_pilot, (keys, data, ids))
    t0 = time.perf_counter()
    state, buf, n_lf, init_ok = jax.block_until_ready(exe1(keys, data, ids))
    wall = time.perf_counter() - t0
    K = kept_indices(pot).size
    nd_pilot = sched.num_draws
    t0 = time.perf_counter()  # the host-side ESS step counts as sampling time
    z_pilot = np.asarray(buf[:S, :, :nd_pilot, :K])
    ok = np.asarray(init_ok[:S]).all(axis=1) & np.all(np.isfinite(z_pilot), axis=(1, 2, 3))
    need = _pilot_lengths(z_pilot, ok, sched)
    wall += time.perf_counter() - t0
    need_pad = np.concatenate([need, np.full(S_pad - S, sched.num_samples, np.int64)])
    totals = jnp.asarray(sched.num_warmup + need_pad, jnp.int32)
    if reporter is not None:  # the continuation reports all completed iterations, pilot included
        reporter.restart(float(np.sum(np.asarray(totals, np.int64))) * sched.num_chains)

    def build_cont():
        block = partial(_block_continue, pot=pot, kernel_factory=kernel_factory, sched=sched, progress=progress_on)
        return _with_constrain(_distribute(block, method, n_dev), pot), None

    args = (keys, data, ids, state, buf, n_lf, totals)
    (exe2, _), ct2 = _compiled(base_key + ("continue",), build_cont, args)
    t0 = time.perf_counter()
    samples, stats = jax.block_until_ready(exe2(*args))
    wall += time.perf_counter() - t0
    # each replicate: num_draws draws evenly spaced over its own valid draws
    nd_valid = -(-need // sched.thinning)
    sel = np.floor(np.arange(nd_pilot)[None, :] * nd_valid[:, None] / nd_pilot).astype(np.int64)  # (S, nd)
    pick = lambda v: np.take_along_axis(np.asarray(v)[:S], sel.reshape((S, 1, nd_pilot) + (1,) * (v.ndim - 3)),
                                        axis=2)
    samples = {k: np.array(pick(v)) for k, v in samples.items()}
    out = {k: pick(v) for k, v in stats.items() if k != "n_leapfrog"}
    out["n_leapfrog"] = np.asarray(stats["n_leapfrog"])[:S]
    out["init_ok"] = np.asarray(init_ok)[:S]
    return samples, out, need, wall, ct1 + ct2, (pot, specs)
