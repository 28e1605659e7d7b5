"""Step-wise NUTS: the kernel, its declared statistics, its config and the NUTS inference method.

The kernel is NumPyro's NUTS (``numpyro.infer.hmc_util.build_tree``: multinomial sampling,
uniform progressive sampling inside a doubling, biased progressive sampling between doublings,
checkpointed "iterative" U-turn checks, divergence at ΔH > 1000; warm-up by NumPyro's
``warmup_adapter``) restated as a state machine that advances exactly ONE leapfrog step per
call, so that, vectorised over replicates, a replicate whose trajectory ends starts its next
iteration at once instead of waiting for the deepest tree of the batch (the lockstep of a plain
``vmap`` of NUTS). Neither NumPyro nor BlackJAX offers such a step-wise NUTS, hence this module.

Public names: :class:`NUTSConfig` (the one source of the sampler defaults), :class:`NUTS` (the
:class:`~noisydot_sbc.inference.InferenceMethod`), :func:`nuts_kernel` (the
:class:`~noisydot_sbc.inference.kernel.Kernel`), :data:`NUTS_STATS` (what it records),
:func:`build_kernel` (the raw ``(init, step)`` pair), :class:`NUTSState`, :class:`NUTSInfo`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from numpyro.infer.hmc_util import warmup_adapter

from .kernel import Kernel, StatSpec
from .rng import key_data as _key_data
from .rng import normal_from_uniform as _normal_from_uniform
from .rng import uniforms as _uniforms

MAX_DELTA_ENERGY = 1000.0
CHAIN_METHODS = ("sequential", "vectorized", "parallel", "auto")

NUTS_STATS = (
    StatSpec("diverging", "draw", "b", "the trajectory hit an energy error above 1000"),
    StatSpec("tree_depth", "draw", "i", "number of trajectory doublings"),
    StatSpec("n_steps", "draw", "i", "leapfrog steps (gradient evaluations) of the iteration"),
    StatSpec("acceptance_rate", "draw", "f", "mean Metropolis acceptance probability over the trajectory"),
    StatSpec("step_size", "draw", "f", "leapfrog step size"),
    StatSpec("energy", "draw", "f", "Hamiltonian at the draw"),
    StatSpec("lp", "draw", "f", "log density (up to a constant, unconstrained space) at the draw"),
)
STAT_NAMES = tuple(s.name for s in NUTS_STATS)


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


@dataclass(frozen=True)
class NUTSConfig:
    """NUTS settings: the one source of the sampler defaults.

    ``target_ess``: if set, the run length follows from it: after warm-up each replicate's chains
    run ``num_samples`` iterations (the pilot), its bulk ESS (minimum over the kept scalar
    parameters, all chains) is estimated, and chains whose ESS is below ``target_ess`` are
    continued (same chains, no restart) to the length the pilot predicts for ``target_ess``
    (x1.2 margin), at most ``max_samples`` iterations. Each replicate returns ``num_draws``
    draws per chain, evenly spaced over its own run (``fit_stats['num_samples']`` says how long
    that was). ``max_samples`` defaults to ``10 * num_samples``.
    """

    num_warmup: int = 500
    num_samples: int = 1000
    num_chains: int = 2
    thinning: int = 1
    target_accept_prob: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    chain_method: str = "auto"  # "sequential" | "vectorized" | "parallel" | "auto"
    target_ess: Optional[int] = None
    max_samples: Optional[int] = None
    name: str = "nuts"

    def validate(self) -> "NUTSConfig":
        """Return self after checking every field; raises ValueError naming the bad field."""
        if self.name != "nuts":
            raise ValueError(f"NUTSConfig.name must be 'nuts', got {self.name!r}")
        for name in ("num_warmup", "num_samples", "num_chains", "thinning", "max_tree_depth"):
            value = getattr(self, name)
            if not _is_int(value):
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
        if isinstance(tap, bool) or not isinstance(tap, (int, float, np.floating)) or not (0.0 < float(tap) < 1.0):
            raise ValueError(f"NUTSConfig.target_accept_prob must be in (0, 1), got {tap!r}")
        if not isinstance(self.dense_mass, (bool, np.bool_)):
            raise ValueError(f"NUTSConfig.dense_mass must be a bool, got {self.dense_mass!r}")
        if self.chain_method not in CHAIN_METHODS:
            raise ValueError(f"NUTSConfig.chain_method must be one of {CHAIN_METHODS}, got {self.chain_method!r}")
        if self.target_ess is not None and (not _is_int(self.target_ess) or self.target_ess < 1):
            raise ValueError(f"NUTSConfig.target_ess must be None or a positive integer, got {self.target_ess!r}")
        if self.max_samples is not None:
            if not _is_int(self.max_samples) or self.max_samples < self.num_samples:
                raise ValueError(
                    f"NUTSConfig.max_samples must be None or an integer >= num_samples ({self.num_samples}), "
                    f"got {self.max_samples!r}"
                )
        return self

    @property
    def num_draws(self) -> int:
        """Draws kept per chain after thinning (the driver's :class:`Schedule` computes it)."""
        return _schedule(self).num_draws

    @property
    def sample_cap(self) -> int:
        """Most post-warm-up iterations per chain (``max_samples``, or ``num_samples`` without ``target_ess``)."""
        return _schedule(self).sample_cap

    def _replace(self, **changes) -> "NUTSConfig":
        """``dataclasses.replace`` under the NamedTuple name older callers use."""
        return dataclasses.replace(self, **changes)


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




class _KernelSettings(NamedTuple):
    num_warmup: int
    max_tree_depth: int
    target_accept_prob: float
    dense_mass: bool


def _record(info: NUTSInfo) -> dict:
    return {"diverging": info.diverging, "tree_depth": info.tree_depth, "n_steps": info.n_steps,
            "acceptance_rate": info.acceptance_rate, "step_size": info.step_size, "energy": info.energy,
            "lp": -info.pe}


def nuts_kernel(potential, num_warmup: int, data_proto, max_tree_depth: int = 10, target_accept_prob: float = 0.8,
                dense_mass: bool = False) -> Kernel:
    """The step-wise NUTS :class:`~noisydot_sbc.inference.kernel.Kernel` on a
    :class:`~noisydot_sbc.inference.potential.Potential`; ``data_proto``: one replicate's
    prepared data (``potential.prepare(d)``), or its shape/dtype structure."""
    settings = _KernelSettings(num_warmup, max_tree_depth, target_accept_prob, dense_mass)
    init, step = build_kernel(potential.value_and_grad, potential.dim, settings, data_proto, potential.dtype)
    return Kernel(
        name="nuts", init=init, step=step, stats=NUTS_STATS, record=_record,
        iteration=lambda state: state.it, cost=lambda info: info.n_steps,
        pack=step.pack, unpack=step.unpack, step_packed=step.packed,
    )


@dataclass(frozen=True)
class NUTSKernel:
    """Hashable factory ``(potential, num_warmup, data_proto) -> Kernel`` of the step-wise NUTS kernel."""

    max_tree_depth: int = 10
    target_accept_prob: float = 0.8
    dense_mass: bool = False

    @classmethod
    def from_config(cls, config: NUTSConfig) -> "NUTSKernel":
        return cls(int(config.max_tree_depth), float(config.target_accept_prob), bool(config.dense_mass))

    def __call__(self, potential, num_warmup: int, data_proto) -> Kernel:
        return nuts_kernel(potential, num_warmup, data_proto, self.max_tree_depth, self.target_accept_prob,
                           self.dense_mass)




# --------------------------------------------------------------------------------------------
# the NUTS inference method, and the older fit_batch entry point
# --------------------------------------------------------------------------------------------
FIT_STATS = (
    StatSpec("n_leapfrog", "replicate", "i", "leapfrog steps (gradient evaluations) of all chains, warm-up included"),
    StatSpec("num_samples", "replicate", "i", "post-warm-up iterations per chain (set by target_ess when given)"),
)


def _schedule(config: NUTSConfig):
    from .driver import Schedule

    return Schedule(config.num_warmup, config.num_samples, config.num_chains, config.thinning, config.target_ess,
                    config.max_samples)


class FitResult(NamedTuple):
    """What :func:`fit_batch` returns (the older result type; :meth:`NUTS.fit` returns a Posterior)."""

    samples: dict  # site -> (S, chain, draw, *site_shape), constrained
    sample_stats: dict  # ArviZ names -> (S, chain, draw)
    chain_method: str
    wall_time: float  # seconds of the sampling call, compile excluded
    compile_time: float
    failed: np.ndarray  # (S,) bool
    error: list  # per replicate: "" or why it failed
    n_leapfrog: np.ndarray = None  # (S, chain) leapfrog steps (gradient evaluations), warm-up included
    num_samples: np.ndarray = None  # (S,) post-warm-up iterations per chain


def fit_batch(key, model, data: dict, config: NUTSConfig = NUTSConfig(), keep_sites=None, drop_sites=None,
              progress=None, progress_every: Optional[int] = None) -> FitResult:
    """Fit ``model(**data_s)`` for every replicate s with NUTS, all in one compiled computation.

    data: dict name -> array with leading replicate axis S (e.g. x (S,N,M), w (S,M), y (S,N)).
    Stored sites: ``keep_sites`` (default: the model's parameters, ``models.PARAMS``), or every
    sample site except ``drop_sites``. Samples are constrained, shape (S, chain, draw, *site_shape).
    A replicate whose initialisation or sampling produced non-finite values is flagged in
    ``failed`` (its draws are NaN) and explained in ``error``; the batch still completes.
    """
    from .driver import PROGRESS_EVERY, run_chains

    if not isinstance(config, NUTSConfig):
        raise ValueError(f"config must be a NUTSConfig, got {type(config).__name__}")
    config.validate()
    res = run_chains(key, model, data, NUTSKernel.from_config(config), _schedule(config), config.chain_method,
                     keep_sites=keep_sites, drop_sites=drop_sites, progress=progress,
                     progress_every=PROGRESS_EVERY if progress_every is None else progress_every)
    return FitResult(res.samples, res.sample_stats, res.chain_method, res.wall_time, res.compile_time, res.failed,
                     res.error, res.n_grad, res.num_samples)


class NUTS:
    """The NUTS :class:`~noisydot_sbc.inference.InferenceMethod`: ``NUTS(config)`` or ``NUTS(**fields)``."""

    name = "nuts"

    def __init__(self, config: Optional[NUTSConfig] = None, **options):
        if config is None:
            config = NUTSConfig(**options)
        elif options:
            config = dataclasses.replace(config, **options)
        if not isinstance(config, NUTSConfig):
            raise ValueError(f"config must be a NUTSConfig, got {type(config).__name__}")
        self.config = config.validate()

    def __repr__(self):
        return f"NUTS({self.config!r})"

    def fit(self, key, model, data: dict, progress=None):
        """Posterior of ``model`` for every replicate of ``data`` (see :func:`fit_batch`)."""
        from . import Posterior
        from .driver import run_chains

        res = run_chains(key, model, data, NUTSKernel.from_config(self.config), _schedule(self.config),
                         self.config.chain_method, progress=progress)
        info = dataclasses.asdict(self.config)
        info.update(chain_method=res.chain_method, chain_method_reason=res.chain_method_reason)
        fit_stats = {"n_leapfrog": res.n_grad.sum(axis=1).astype(np.int64), "num_samples": res.num_samples}
        return Posterior(
            samples=res.samples, sample_stats=res.sample_stats, fit_stats=fit_stats,
            stat_specs=tuple(res.stat_specs) + FIT_STATS, failed=res.failed, error=res.error, inference="nuts",
            info=info, independent_draws=False, wall_time=res.wall_time, compile_time=res.compile_time,
        )
