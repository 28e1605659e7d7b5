"""Batched NUTS for simulation-based calibration: many replicates in ONE compiled computation.

Design (see docs/engine.md):

* The potential is built once from the NumPyro model with
  :func:`numpyro.infer.util.initialize_model` (``dynamic_args=True``), so it is a function of
  (unconstrained parameters, per-replicate data): one compiled program serves every replicate.
* The sampler is NumPyro's NUTS (multinomial sampling, iterative U-turn checks with checkpoints,
  windowed step-size / mass-matrix adaptation from :func:`numpyro.infer.hmc_util.warmup_adapter`)
  rewritten as a *state machine that advances exactly one leapfrog step per call*
  (:func:`build_kernel` -> ``init(key, z) -> NUTSState``, ``step(key, state, data) ->
  (NUTSState, NUTSInfo)``). Vectorised over replicates, every replicate does useful work on
  every step: a replicate whose trajectory ends starts its next iteration at once instead of
  waiting for the deepest tree of the batch (the lockstep of a plain ``vmap`` of NUTS).
* ``chain_method`` picks how the replicates are mapped: ``sequential`` (``lax.map``),
  ``vectorized`` (``vmap``), ``parallel`` (replicates sharded over ``jax.devices()`` with
  ``shard_map``, each device vectorised), ``auto`` (per platform, see :func:`resolve_chain_method`).
* Compiled executables are cached on (model, config, data shapes/dtypes, mode, devices):
  a second call with the same shapes does not recompile.
"""
from __future__ import annotations

import os
import re
import time
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree
from numpyro.distributions.transforms import biject_to
from numpyro.infer.hmc_util import warmup_adapter
from numpyro.infer.initialization import init_to_median
from numpyro.infer.util import initialize_model

CHAIN_METHODS = ("sequential", "vectorized", "parallel", "auto")
STAT_NAMES = ("diverging", "tree_depth", "n_steps", "acceptance_rate", "step_size", "energy", "lp")
MAX_DELTA_ENERGY = 1000.0
INIT_RADIUS = 1.0  # chains start uniformly within ±1 of the prior median in unconstrained space
INIT_ATTEMPTS = 100


# --------------------------------------------------------------------------------------------
# configuration and results
# --------------------------------------------------------------------------------------------
class NUTSConfig(NamedTuple):
    num_warmup: int = 500
    num_samples: int = 1000
    num_chains: int = 2
    thinning: int = 1
    target_accept_prob: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    chain_method: str = "auto"  # "sequential" | "vectorized" | "parallel" | "auto"

    def validate(self) -> "NUTSConfig":
        """Return self after checking every field; raises ValueError naming the bad field."""
        for name in ("num_warmup", "num_samples", "num_chains", "thinning", "max_tree_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"NUTSConfig.{name} must be an integer, got {value!r}")
        if self.num_warmup < 0:
            raise ValueError(f"NUTSConfig.num_warmup must be >= 0, got {self.num_warmup}")
        if self.num_samples <= 0:
            raise ValueError(f"NUTSConfig.num_samples must be > 0, got {self.num_samples}")
        if self.num_chains < 1:
            raise ValueError(f"NUTSConfig.num_chains must be >= 1, got {self.num_chains}")
        if self.thinning < 1:
            raise ValueError(f"NUTSConfig.thinning must be >= 1, got {self.thinning}")
        if self.thinning > self.num_samples:
            raise ValueError(
                f"NUTSConfig.thinning ({self.thinning}) must not exceed num_samples ({self.num_samples})"
            )
        if not 1 <= self.max_tree_depth <= 30:
            raise ValueError(f"NUTSConfig.max_tree_depth must be in 1..30, got {self.max_tree_depth}")
        tap = self.target_accept_prob
        if not isinstance(tap, (int, float, np.floating)) or not (0.0 < float(tap) < 1.0):
            raise ValueError(f"NUTSConfig.target_accept_prob must be in (0, 1), got {tap!r}")
        if not isinstance(self.dense_mass, (bool, np.bool_)):
            raise ValueError(f"NUTSConfig.dense_mass must be a bool, got {self.dense_mass!r}")
        if self.chain_method not in CHAIN_METHODS:
            raise ValueError(f"NUTSConfig.chain_method must be one of {CHAIN_METHODS}, got {self.chain_method!r}")
        return self

    @property
    def num_draws(self) -> int:
        """Draws kept per chain after thinning."""
        return -(-self.num_samples // self.thinning)


class FitResult(NamedTuple):
    samples: dict  # site -> (S, chain, draw, *site_shape), constrained
    sample_stats: dict  # ArviZ names -> (S, chain, draw)
    chain_method: str
    wall_time: float  # seconds of the sampling call, compile excluded
    compile_time: float
    failed: np.ndarray  # (S,) bool
    error: list  # per replicate: "" or why it failed
    n_leapfrog: np.ndarray = None  # (S, chain) leapfrog steps (gradient evaluations), warm-up included


# --------------------------------------------------------------------------------------------
# the step-wise NUTS kernel (one replicate-chain; vmap it for a batch)
# --------------------------------------------------------------------------------------------
class NUTSState(NamedTuple):
    """State of one chain between two leapfrog steps."""

    t: jax.Array  # leapfrog-step counter (uint32): the counter of the random stream
    it: jax.Array  # iteration (completed trajectories) counter
    z: jax.Array  # current sample (flat, unconstrained)
    pe: jax.Array
    grad: jax.Array
    adapt: tuple  # numpyro HMCAdaptState (step_size, inverse_mass_matrix, mass_matrix_sqrt, ...)
    energy0: jax.Array  # Hamiltonian at the start of the trajectory
    # whole tree (the doublings merged so far)
    z_left: jax.Array
    r_left: jax.Array
    g_left: jax.Array
    z_right: jax.Array
    r_right: jax.Array
    g_right: jax.Array
    prop: tuple  # (z, pe, grad, energy) of the tree's proposal
    log_w: jax.Array
    r_sum: jax.Array
    depth: jax.Array
    sum_acc: jax.Array
    n_prop: jax.Array
    # the subtree (doubling) under construction
    going_right: jax.Array
    front: tuple  # (z, r, grad) of its leading leaf
    sub_prop: tuple
    sub_log_w: jax.Array
    sub_r_sum: jax.Array
    sub_n: jax.Array
    sub_sum_acc: jax.Array
    r_ckpts: jax.Array  # (max_tree_depth, D)
    r_sum_ckpts: jax.Array


class NUTSInfo(NamedTuple):
    """What one leapfrog step reports; the iteration fields are meaningful where ``done``."""

    done: jax.Array  # a trajectory ended on this step: an MCMC iteration completed
    it: jax.Array  # index of that iteration
    z: jax.Array
    pe: jax.Array
    diverging: jax.Array
    tree_depth: jax.Array
    n_steps: jax.Array
    acceptance_rate: jax.Array
    step_size: jax.Array
    energy: jax.Array


# --------------------------------------------------------------------------------------------
# counter-based random numbers: Threefry-2x32 (the hash behind jax.random), unrolled so that XLA
# fuses it into the surrounding elementwise code (on CPU jax.random lowers it to a rolled loop,
# i.e. a nested while loop per call, which dominated the cost of a batched NUTS step).
# --------------------------------------------------------------------------------------------
def _rotl(x, r):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32 (20 rounds) on uint32 arrays; bit-identical to jax's ``threefry2x32_p``."""
    k1, k2, x1, x2 = (jnp.asarray(a, jnp.uint32) for a in (k1, k2, x1, x2))
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    x1 = x1 + ks[0]
    x2 = x2 + ks[1]
    for i in range(5):
        for r in rotations[i % 2]:
            x1 = x1 + x2
            x2 = _rotl(x2, r)
            x2 = x1 ^ x2
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _uniforms(key_data, counter, n, dtype):
    """``n`` uniforms in [0, 1) from (key, counter): one fused Threefry hash."""
    wide = jnp.dtype(dtype) == jnp.float64
    words = n * (2 if wide else 1)
    pairs = -(-words // 2)
    j = jnp.arange(pairs, dtype=jnp.uint32)
    c = jnp.broadcast_to(jnp.asarray(counter, jnp.uint32), j.shape)
    h1, h2 = threefry2x32(key_data[0], key_data[1], c, j)
    bits = jnp.concatenate([h1, h2])[:words]
    if wide:
        hi, lo = bits[:n], bits[n:]
        return ((hi >> np.uint32(5)).astype(dtype) * 2.0**26 + (lo >> np.uint32(6)).astype(dtype)) * 2.0**-53
    return (bits >> np.uint32(8)).astype(dtype) * np.float32(2.0**-24)


def _normal_from_uniform(u):
    """Standard normals from uniforms in [0, 1) (shifted to the open interval)."""
    eps = jnp.finfo(u.dtype).eps
    u = jnp.clip(u, eps, 1 - eps)
    return np.sqrt(2.0).astype(u.dtype) * lax.erf_inv(2 * u - 1)


def _key_data(key):
    """uint32[2] words of a raw or typed PRNG key."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return key.astype(jnp.uint32).reshape(-1)[-2:]


def _velocity(inv_mass, r):
    return inv_mass @ r if inv_mass.ndim == 2 else inv_mass * r


def _kinetic(inv_mass, r):
    return 0.5 * jnp.dot(r, _velocity(inv_mass, r))


def _turning(inv_mass, r_left, r_right, r_sum):
    """NumPyro's generalised U-turn criterion; broadcasts over leading axes of r_left / r_sum."""
    v_left = jnp.einsum("...ij,...j->...i", inv_mass, r_left) if inv_mass.ndim == 2 else inv_mass * r_left
    v_right = _velocity(inv_mass, r_right)
    r_sum = r_sum - (r_left + r_right) / 2
    return (jnp.sum(v_left * r_sum, -1) <= 0) | (jnp.sum(v_right * r_sum, -1) <= 0)


def _select(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def build_kernel(value_and_grad_fn: Callable, dim: int, config: NUTSConfig, data_proto, dtype=jnp.float32):
    """Step-wise NUTS for one chain.

    ``value_and_grad_fn(z, data) -> (potential_energy, grad)`` on a flat unconstrained vector;
    ``data_proto`` is one replicate's data (or its shape/dtype structure).
    Returns ``(init, step)``: ``init(key, z, data) -> NUTSState`` and
    ``step(key, state, data) -> (NUTSState, NUTSInfo)``; ``step`` performs exactly one leapfrog
    step and, when the trajectory ends, the NUTS transition, the warm-up adaptation and the start
    of the next trajectory. The algorithm is NumPyro's ``build_tree`` (multinomial sampling,
    biased progressive sampling between doublings, checkpointed U-turn checks inside doublings).
    """
    max_depth = config.max_tree_depth
    num_warmup = config.num_warmup
    wa_init, wa_update = warmup_adapter(
        num_warmup, dense_mass=config.dense_mass, target_accept_prob=config.target_accept_prob
    )
    ckpt_ids = jnp.arange(max_depth)

    def _start_trajectory(u, t, it, z, pe, grad, adapt):
        """Begin a trajectory from z: ``u`` holds D+1 uniforms (momentum, first direction)."""
        eps = _normal_from_uniform(u[:dim])
        sqrt = adapt.mass_matrix_sqrt
        r = sqrt @ eps if sqrt.ndim == 2 else sqrt * eps
        energy0 = pe + _kinetic(adapt.inverse_mass_matrix, r)
        zeros = jnp.zeros((dim,), dtype)
        return NUTSState(
            t=t, it=it, z=z, pe=pe, grad=grad, adapt=adapt, energy0=energy0,
            z_left=z, r_left=r, g_left=grad, z_right=z, r_right=r, g_right=grad,
            prop=(z, pe, grad, energy0), log_w=jnp.zeros((), dtype), r_sum=r,
            depth=jnp.zeros((), jnp.int32), sum_acc=jnp.zeros((), dtype), n_prop=jnp.zeros((), jnp.int32),
            going_right=u[dim] < 0.5, front=(z, r, grad),
            sub_prop=(z, pe, grad, energy0), sub_log_w=jnp.zeros((), dtype), sub_r_sum=zeros,
            sub_n=jnp.zeros((), jnp.int32), sub_sum_acc=jnp.zeros((), dtype),
            r_ckpts=jnp.zeros((max_depth, dim), dtype), r_sum_ckpts=jnp.zeros((max_depth, dim), dtype),
        )

    def init(key, z, data):
        """State at z, identity mass matrix, step size 1; ``key`` seeds the first momentum."""
        z = jnp.asarray(z, dtype)
        pe, grad = value_and_grad_fn(z, data)
        adapt = wa_init((z, pe, grad), jax.random.PRNGKey(0), step_size=jnp.asarray(1.0, dtype), mass_matrix_size=dim)
        adapt = adapt._replace(rng_key=None)  # no randomness in the adaptation: no key to split per step
        u = _uniforms(_key_data(key), np.uint32(0xFFFFFFFF), dim + 1, dtype)
        return _start_trajectory(u, jnp.zeros((), jnp.uint32), jnp.zeros((), jnp.int32), z, pe, grad, adapt)

    def _step(key, s: NUTSState, data, packed: bool):
        # all randomness of this step: one hash of (key, step counter)
        u = _uniforms(_key_data(key), s.t, dim + 4, dtype)
        inv_mass = s.adapt.inverse_mass_matrix
        step_size = s.adapt.step_size
        eps = jnp.where(s.going_right, step_size, -step_size)
        # --- one leapfrog step from the leading leaf of the subtree
        fz, fr, fg = s.front
        r_half = fr - 0.5 * eps * fg
        z1 = fz + eps * _velocity(inv_mass, r_half)
        pe1, g1 = value_and_grad_fn(z1, data)
        r1 = r_half - 0.5 * eps * g1
        energy1 = pe1 + _kinetic(inv_mass, r1)
        delta = energy1 - s.energy0
        delta = jnp.where(jnp.isnan(delta), jnp.inf, delta)
        leaf_div = delta > MAX_DELTA_ENERGY
        acc = jnp.minimum(jnp.exp(-delta), 1.0)
        leaf_w = -delta
        # --- progressive (uniform) multinomial sampling inside the subtree
        first = s.sub_n == 0
        p_leaf = jnp.where(first, 1.0, jax.nn.sigmoid(leaf_w - s.sub_log_w))
        take = u[dim + 1] < p_leaf
        sub_prop = _select(take, (z1, pe1, g1, energy1), s.sub_prop)
        sub_log_w = jnp.where(first, leaf_w, jnp.logaddexp(s.sub_log_w, leaf_w))
        sub_r_sum = jnp.where(first, r1, s.sub_r_sum + r1)
        sub_sum_acc = s.sub_sum_acc + acc
        # --- checkpointed U-turn checks inside the subtree (NumPyro's _is_iterative_turning)
        leaf_idx = s.sub_n
        idx_max = lax.population_count(leaf_idx >> 1)
        idx_min = idx_max - lax.population_count((~leaf_idx & (leaf_idx + 1)) - 1) + 1
        write = ((leaf_idx % 2) == 0) & (ckpt_ids == idx_max)
        r_ckpts = jnp.where(write[:, None], r1, s.r_ckpts)
        r_sum_ckpts = jnp.where(write[:, None], sub_r_sum, s.r_sum_ckpts)
        turn_i = _turning(inv_mass, r_ckpts, r1, sub_r_sum - r_sum_ckpts + r_ckpts)
        sub_turning = jnp.any(turn_i & (ckpt_ids >= idx_min) & (ckpt_ids <= idx_max))
        sub_n = s.sub_n + 1
        sub_done = (sub_n >= (1 << s.depth)) | sub_turning | leaf_div
        # --- merge the subtree into the tree (biased progressive sampling)
        z_left, r_left, g_left = _select(s.going_right, (s.z_left, s.r_left, s.g_left), (z1, r1, g1))
        z_right, r_right, g_right = _select(s.going_right, (z1, r1, g1), (s.z_right, s.r_right, s.g_right))
        r_sum = s.r_sum + sub_r_sum
        p_tree = jnp.where(sub_turning | leaf_div, 0.0, jnp.minimum(jnp.exp(sub_log_w - s.log_w), 1.0))
        take_t = u[dim + 2] < p_tree
        prop = _select(take_t, sub_prop, s.prop)
        depth = s.depth + 1
        turning = sub_turning | _turning(inv_mass, r_left, r_right, r_sum)
        sum_acc = s.sum_acc + sub_sum_acc
        n_prop = s.n_prop + sub_n
        tree_done = sub_done & ((depth >= max_depth) | turning | leaf_div)
        # --- end of trajectory: the NUTS transition and warm-up adaptation
        accept_prob = sum_acc / n_prop
        z_new, pe_new, g_new, energy_new = prop
        adapt = lax.cond(
            tree_done & (s.it < num_warmup),
            lambda a: wa_update(s.it, accept_prob, (z_new, pe_new, g_new), a),
            lambda a: a,
            s.adapt,
        )
        t_next = s.t + np.uint32(1)
        fresh = _start_trajectory(u[: dim + 1], t_next, s.it + 1, z_new, pe_new, g_new, adapt)
        # --- the state after this step, in the three cases
        going_right_next = u[dim + 3] < 0.5
        merged = s._replace(
            t=t_next,
            z_left=z_left, r_left=r_left, g_left=g_left, z_right=z_right, r_right=r_right, g_right=g_right,
            prop=prop, log_w=jnp.logaddexp(s.log_w, sub_log_w), r_sum=r_sum, depth=depth,
            sum_acc=sum_acc, n_prop=n_prop, going_right=going_right_next,
            front=_select(going_right_next, (z_right, r_right, g_right), (z_left, r_left, g_left)),
            sub_n=jnp.zeros((), jnp.int32), sub_sum_acc=jnp.zeros((), s.sub_sum_acc.dtype),
        )
        growing = s._replace(
            t=t_next, front=(z1, r1, g1), sub_prop=sub_prop, sub_log_w=sub_log_w, sub_r_sum=sub_r_sum, sub_n=sub_n,
            sub_sum_acc=sub_sum_acc, r_ckpts=r_ckpts, r_sum_ckpts=r_sum_ckpts,
        )
        if packed:  # select on two packed arrays: a few fused kernels instead of one per field
            fresh, merged, growing = pack(fresh), pack(merged), pack(growing)
        new_state = _select(tree_done, fresh, _select(sub_done, merged, growing))
        info = NUTSInfo(
            done=tree_done, it=s.it, z=z_new, pe=pe_new, diverging=leaf_div, tree_depth=depth,
            n_steps=n_prop, acceptance_rate=accept_prob, step_size=step_size, energy=energy_new,
        )
        return new_state, info

    def step(key, state: NUTSState, data):
        return _step(key, state, data, packed=False)

    def step_packed(key, packed_state, data):
        """``step`` on the packed representation (what the batched driver carries)."""
        return _step(key, unpack(packed_state), data, packed=True)

    proto = jax.eval_shape(init, jax.random.PRNGKey(0), jnp.zeros((dim,), dtype), data_proto)
    pack, unpack = _packer(proto, dtype)
    step.packed = step_packed
    step.pack = pack
    step.unpack = unpack
    return init, step


def _packer(proto, dtype):
    """pack(tree) -> (float vector, int32 vector); unpack inverts it (shapes from ``proto``)."""
    leaves, treedef = jax.tree.flatten(proto)
    is_float = [jnp.issubdtype(l.dtype, jnp.floating) for l in leaves]
    sizes = [int(np.prod(l.shape)) for l in leaves]

    def pack(tree):
        ls = jax.tree.leaves(tree)
        f = [jnp.ravel(l).astype(dtype) for l, fl in zip(ls, is_float) if fl]
        i = [jnp.ravel(l).astype(jnp.int32) for l, fl in zip(ls, is_float) if not fl]
        return (jnp.concatenate(f) if f else jnp.zeros(0, dtype), jnp.concatenate(i) if i else jnp.zeros(0, jnp.int32))

    def unpack(packed):
        fvec, ivec = packed
        out, fo, io = [], 0, 0
        for l, fl, n in zip(leaves, is_float, sizes):
            if fl:
                out.append(fvec[fo : fo + n].reshape(l.shape).astype(l.dtype))
                fo += n
            else:
                out.append(ivec[io : io + n].reshape(l.shape).astype(l.dtype))
                io += n
        return jax.tree.unflatten(treedef, out)

    return pack, unpack


# --------------------------------------------------------------------------------------------
# model -> potential, and the batched driver
# --------------------------------------------------------------------------------------------
class _ModelSpec(NamedTuple):
    value_and_grad: Callable  # (z_flat, prepared) -> (pe, grad)
    prepare: Callable  # data of one replicate -> what value_and_grad takes (hoisted data-only work)
    dim: int
    dtype: object
    keep: dict  # site -> (flat indices array, site shape, transform)
    unravel: Callable
    z_center: jax.Array  # unconstrained prior median: the centre of the initial points


def _model_spec(model, data: dict, drop_sites) -> _ModelSpec:
    """Trace the model on the first replicate whose data admits a valid initial point."""
    S = next(iter(data.values())).shape[0]
    last_err = None
    for s in range(min(S, 8)):
        try:
            info = initialize_model(
                jax.random.PRNGKey(s), model, model_kwargs={k: v[s] for k, v in data.items()}, dynamic_args=True,
                init_strategy=init_to_median(num_samples=15),
            )
            break
        except RuntimeError as err:  # no valid initial point for this replicate: try the next one
            last_err = err
    else:
        raise ValueError(f"model cannot be initialised on any of the first replicates' data: {last_err}")
    potential_gen = info.potential_fn
    z_proto = info.param_info.z
    flat, unravel = ravel_pytree(z_proto)
    dim = int(flat.shape[0])
    dtype = flat.dtype
    index_tree = unravel(jnp.arange(dim, dtype=dtype))
    keep = {}
    for name in sorted(z_proto):
        if name in drop_sites:
            continue
        site = info.model_trace[name]
        idx = np.asarray(index_tree[name]).astype(np.int64).reshape(-1)
        keep[name] = (idx, tuple(np.shape(site["value"])), biject_to(site["fn"].support))

    def potential(z, data):
        return potential_gen(**data)(unravel(z))

    vg = jax.value_and_grad(potential)
    prepare, vg_hoisted = _hoist(vg, flat, {k: v[0] for k, v in data.items()})
    return _ModelSpec(vg_hoisted, prepare, dim, dtype, keep, unravel, flat)


def _hoist(vg, z_proto, data_one):
    """Split ``vg(z, data)`` into ``prepare(data)`` (everything that does not depend on z: e.g.
    x·w and Σ x²w² in the Gaussian model) and ``vg_h(z, prepared)``, by partial evaluation of the
    jaxpr with z unknown. The sampler loop then never recomputes data-only terms (XLA's loop-
    invariant code motion did not hoist them out of the nested while loop). Falls back to the
    unsplit function if the split fails or does not reproduce ``vg`` on the prototype."""
    identity_prepare = (lambda d: d), vg
    try:
        from jax._src.interpreters import partial_eval as pe

        leaves, tree = jax.tree.flatten(data_one)
        closed = jax.make_jaxpr(lambda z, *ls: vg(z, jax.tree.unflatten(tree, ls)))(z_proto, *leaves)
        known, unknown, out_uk, res_avals = pe.partial_eval_jaxpr_nounits(
            closed, [True] + [False] * len(leaves), instantiate=True
        )
        n_res = len(res_avals)
        if not all(out_uk):
            return identity_prepare

        def prepare(data):
            outs = jax.core.eval_jaxpr(known.jaxpr, known.consts, *jax.tree.leaves(data))
            return tuple(outs[len(outs) - n_res :])

        def vg_h(z, res):
            value, grad = jax.core.eval_jaxpr(unknown.jaxpr, unknown.consts, *res, z)
            return value, grad

        v0, g0 = jax.jit(vg)(z_proto, data_one)
        v1, g1 = jax.jit(lambda z, d: vg_h(z, prepare(d)))(z_proto, data_one)
        if not (np.allclose(v0, v1, rtol=1e-5, equal_nan=True) and np.allclose(g0, g1, rtol=1e-5, equal_nan=True)):
            return identity_prepare
        return prepare, vg_h
    except Exception:  # private-API drift or an unsupported primitive: keep the plain potential
        return identity_prepare


def _find_init(key, data, spec: _ModelSpec):
    """Uniform within ±INIT_RADIUS of the prior median in unconstrained space (dispersed starts in the
    region the prior believes in, not far in its tails where the exact likelihood's quadrature needs
    its slow robust tiers), retried until potential and gradient are finite."""

    def attempt(k):
        z = spec.z_center + jax.random.uniform(k, (spec.dim,), spec.dtype, -INIT_RADIUS, INIT_RADIUS)
        pe, g = spec.value_and_grad(z, data)
        return z, jnp.isfinite(pe) & jnp.all(jnp.isfinite(g))

    def body(c):
        i, k, _, _ = c
        k, sub = jax.random.split(k)
        z, ok = attempt(sub)
        return i + 1, k, z, ok

    z0 = jnp.zeros((spec.dim,), spec.dtype)
    _, _, z, ok = lax.while_loop(lambda c: (~c[3]) & (c[0] < INIT_ATTEMPTS), body, (0, key, z0, False))
    return z, ok


def _run_one_block(keys, data, spec: _ModelSpec, config: NUTSConfig):
    """Run a block of replicates as ONE step-wise vectorised loop.

    keys (B, 2); data leaves (B, ...). Returns draws (kept unconstrained flat) and stats.
    """
    C = config.num_chains
    total = config.num_warmup + config.num_samples
    nd = config.num_draws
    keep_idx = np.concatenate([v[0] for v in spec.keep.values()]) if spec.keep else np.zeros(0, np.int64)
    B = keys.shape[0]

    def per_rep_keys(k):
        k_init, k_run = jax.random.split(k)
        return jax.random.split(k_init, C), jax.random.split(k_run, C)

    k_init, k_run = jax.vmap(per_rep_keys)(keys)  # (B, C) keys
    data = jax.vmap(spec.prepare)(data)  # data-only terms, computed once per replicate
    init, step = build_kernel(spec.value_and_grad, spec.dim, config, jax.tree.map(lambda a: a[0], data), spec.dtype)
    over_chains = lambda f: jax.vmap(jax.vmap(f, in_axes=(0, None)), in_axes=(0, 0))
    z0, init_ok = over_chains(partial(_find_init, spec=spec))(k_init, data)
    state = jax.vmap(jax.vmap(lambda k, z, d: step.pack(init(k, z, d)), in_axes=(0, 0, None)))(k_run, z0, data)
    step_b = jax.vmap(jax.vmap(step.packed, in_axes=(0, 0, None)), in_axes=(0, 0, 0))
    unpack_b = jax.vmap(jax.vmap(step.unpack))

    # one packed buffer (kept coordinates, then the statistics), one scatter per step;
    # slot nd is the dump for steps that record nothing
    K = keep_idx.size
    dt = spec.dtype
    buf = jnp.full((B, C, nd + 1, K + len(STAT_NAMES)), jnp.nan, dt)
    b_ix = jnp.arange(B)[:, None]
    c_ix = jnp.arange(C)[None, :]

    def cond(c):
        return jnp.any(unpack_b(c[0]).it < total)

    def body(c):
        st, buf, n_lf = c
        st, info = step_b(k_run, st, data)
        n_lf = n_lf + jnp.where(info.done & (info.it < total), info.n_steps, 0)
        j = info.it - config.num_warmup
        rec = info.done & (j >= 0) & (info.it < total) & (j % config.thinning == 0)
        slot = jnp.where(rec, j // config.thinning, nd)
        stats = [info.diverging, info.tree_depth, info.n_steps, info.acceptance_rate, info.step_size,
                 info.energy, -info.pe]
        row = jnp.concatenate([info.z[..., keep_idx]] + [v.astype(dt)[..., None] for v in stats], axis=-1)
        return st, buf.at[b_ix, c_ix, slot].set(row), n_lf

    state, buf, n_lf = lax.while_loop(cond, body, (state, buf, jnp.zeros((B, C), jnp.int32)))
    buf = buf[:, :, :nd]
    out = {"z": buf[..., :K]}
    for i, name in enumerate(STAT_NAMES):
        v = buf[..., K + i]
        if name == "diverging":
            v = v > 0.5
        elif name in ("tree_depth", "n_steps"):
            v = v.astype(jnp.int32)
        out[name] = v
    out["init_ok"] = init_ok
    out["n_leapfrog"] = n_lf
    return out


def _constrain(z_flat, spec: _ModelSpec):
    """Unconstrained kept-site draws (..., K) -> dict of constrained site arrays."""
    out, start = {}, 0
    lead = z_flat.shape[:-1]
    for name, (idx, shape, transform) in spec.keep.items():
        part = z_flat[..., start : start + idx.size]
        start += idx.size
        out[name] = transform(part.reshape(lead + shape))
    return out


def _build_runner(spec: _ModelSpec, config: NUTSConfig, method: str, n_dev: int):
    block = partial(_run_one_block, spec=spec, config=config)

    def post(out):
        samples = _constrain(out.pop("z"), spec)
        return samples, out

    if method == "vectorized":
        return lambda keys, data: post(block(keys, data))
    if method == "sequential":

        def one(args):
            k, d = args
            out = block(k[None], jax.tree.map(lambda a: a[None], d))
            return jax.tree.map(lambda a: a[0], out)

        return lambda keys, data: post(lax.map(one, (keys, data)))
    if method == "parallel":
        devices = jax.devices()[:n_dev]
        if os.environ.get("NOISYDOT_PARALLEL_IMPL", "shard_map") == "shard_map":
            from jax.sharding import Mesh, PartitionSpec as P

            mesh = Mesh(np.array(devices), ("rep",))
            sharded = jax.shard_map(block, mesh=mesh, in_specs=(P("rep"), P("rep")), out_specs=P("rep"), check_vma=False)
            return lambda keys, data: post(sharded(keys, data))
        mapped = jax.pmap(block, devices=devices)

        def run(keys, data):
            split = lambda a: a.reshape((n_dev, a.shape[0] // n_dev) + a.shape[1:])
            out = mapped(split(keys), jax.tree.map(split, data))
            return post(jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), out))

        return run
    raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {method!r}")


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
    if method != "auto":
        return method, "requested"
    n_dev = len(jax.devices())
    if n_dev > 1 and num_replicates >= n_dev:
        return "parallel", f"{n_dev} {jax.default_backend()} devices: shard replicates, vectorised per device"
    return "vectorized", f"single {jax.default_backend()} device: step-wise vectorised NUTS"


_CACHE: dict = {}
_CACHE_STATS = {"hits": 0, "misses": 0}


def cache_info() -> dict:
    """Hits/misses of the compiled-executable cache and its size."""
    return dict(_CACHE_STATS, size=len(_CACHE))


def clear_cache() -> None:
    _CACHE.clear()
    _CACHE_STATS.update(hits=0, misses=0)


def _model_key(model):
    if isinstance(model, partial):
        try:
            key = (model.func, model.args, tuple(sorted(model.keywords.items())))
            hash(key)
            return key
        except TypeError:
            return model
    return model


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------
def _check_data(data) -> int:
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


def fit_batch(key, model, data: dict, config: NUTSConfig = NUTSConfig(), drop_sites=("u",)) -> FitResult:
    """Fit ``model(**data_s)`` for every replicate s with NUTS, all in one compiled computation.

    data: dict name -> array with leading replicate axis S (e.g. x (S,N,M), w (S,M), y (S,N)).
    Returns a :class:`FitResult`; samples are constrained, shape (S, chain, draw, *site_shape).
    A replicate whose initialisation or sampling produced non-finite values is flagged in
    ``failed`` (its draws are NaN) and explained in ``error``; the batch still completes.
    """
    if not isinstance(config, NUTSConfig):
        raise ValueError(f"config must be a NUTSConfig, got {type(config).__name__}")
    config.validate()
    S = _check_data(data)
    drop_sites = tuple(drop_sites or ())
    data = {k: jnp.asarray(v) for k, v in data.items()}
    method, _why = resolve_chain_method(config.chain_method, S)
    n_dev = len(jax.devices()) if method == "parallel" else 1
    S_pad = -(-S // n_dev) * n_dev
    if S_pad != S:  # pad by repeating the last replicate; padded results are discarded
        data = {k: jnp.concatenate([v, jnp.repeat(v[-1:], S_pad - S, axis=0)]) for k, v in data.items()}
    keys = jax.random.split(key, S_pad)
    shapes = tuple(sorted((k, v.shape, str(v.dtype)) for k, v in data.items()))
    cache_key = (_model_key(model), config._replace(chain_method=method), shapes, drop_sites, method, n_dev,
                 str(keys.dtype), bool(jax.config.jax_enable_x64))
    entry = _CACHE.get(cache_key)
    compile_time = 0.0
    if entry is None:
        _CACHE_STATS["misses"] += 1
        t0 = time.perf_counter()
        spec = _model_spec(model, data, drop_sites)
        runner = _build_runner(spec, config, method, n_dev)
        compiled = jax.jit(runner).lower(keys, data).compile()
        compile_time = time.perf_counter() - t0
        entry = _CACHE[cache_key] = (compiled, spec)
    else:
        _CACHE_STATS["hits"] += 1
    compiled, spec = entry
    t0 = time.perf_counter()
    samples, stats = jax.block_until_ready(compiled(keys, data))
    wall_time = time.perf_counter() - t0

    samples = {k: np.array(v[:S]) for k, v in samples.items()}
    stats = {k: np.asarray(v)[:S] for k, v in stats.items()}
    init_ok = stats.pop("init_ok")
    n_leapfrog = stats.pop("n_leapfrog")
    failed = np.zeros(S, bool)
    error = [""] * S
    for s in range(S):
        why = []
        if not init_ok[s].all():
            why.append(f"no finite initial point in {INIT_ATTEMPTS} attempts for chain(s) {np.flatnonzero(~init_ok[s]).tolist()}")
        bad = [k for k, v in samples.items() if not np.all(np.isfinite(v[s]))]
        if bad:
            why.append(f"non-finite draws of {bad}")
        if why:
            failed[s] = True
            error[s] = "; ".join(why)
            for v in samples.values():
                v[s] = np.nan
    sample_stats = {k: stats[k] for k in STAT_NAMES}
    return FitResult(samples, sample_stats, method, wall_time, compile_time, failed, error, n_leapfrog)
