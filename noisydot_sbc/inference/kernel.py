"""The MCMC step-kernel interface the batched driver runs (BlackJAX style).

A kernel is a pair of pure functions for ONE chain of ONE replicate,

* ``init(key, z, data) -> State`` at a flat unconstrained position ``z``;
* ``step(key, state, data) -> (State, Info)``, one call = one unit of work (for the step-wise
  NUTS kernel: one leapfrog step),

plus what the kernel DECLARES it records, so that nothing downstream hard-codes one kernel's
field names:

* ``stats``: a tuple of :class:`StatSpec` (ArviZ sample-stat names) recorded per draw;
* ``record(info) -> {name: scalar array}`` for exactly those names.

The driver (:mod:`noisydot_sbc.inference.driver`) vmaps ``init``/``step`` over chains and
replicates and loops until every chain has done its iterations. Its only assumptions about
``State`` and ``Info`` are the accessors below: ``iteration(state)`` (completed iterations),
``info.done`` (an iteration completed on this step), ``info.it`` (its index) and ``info.z`` (the
flat unconstrained sample of that iteration), and ``cost(info)`` (gradient evaluations of the
iteration completed on this step). A kernel whose ``step`` is a whole iteration sets
``done=True`` on every step. ``pack``/``unpack`` optionally give a compact representation the
driver carries between steps (``step_packed`` then advances it); the identity by default.

To add a kernel (e.g. ChEES or MCLMC), write one module with a function
``(potential, num_warmup) -> Kernel`` and a method class like :class:`~noisydot_sbc.inference.nuts.NUTS`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional


class StatSpec(NamedTuple):
    """One statistic a method records.

    ``name``: ArviZ sample-stat name (``"diverging"``, ``"tree_depth"``, ``"lp"``, ...);
    ``level``: ``"draw"`` (arrays (S, chain, draw)) or ``"replicate"`` (arrays (S,));
    ``kind``: ``"f"`` float, ``"i"`` int, ``"b"`` bool; ``description``: one line."""

    name: str
    level: str
    kind: str
    description: str


LEVELS = ("draw", "replicate")
KINDS = ("f", "i", "b")


class Kernel(NamedTuple):
    """A step kernel for one chain (see the module docstring for the contract)."""

    name: str
    init: Callable  # (key, z, data) -> State
    step: Callable  # (key, state, data) -> (State, Info)
    stats: tuple  # StatSpec, level "draw", recorded at every kept draw
    record: Callable  # Info -> {stat name: scalar array}
    iteration: Callable  # State -> int32 completed iterations
    cost: Callable  # Info -> int32 gradient evaluations of the iteration completed on this step
    pack: Optional[Callable] = None  # State -> carried representation
    unpack: Optional[Callable] = None  # carried representation -> State
    step_packed: Optional[Callable] = None  # (key, packed, data) -> (packed, Info)


def check_stat_specs(specs) -> tuple:
    """Return ``specs`` as a tuple after checking names are unique and level/kind are known."""
    specs = tuple(specs)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"stat_specs: duplicate names in {names}")
    for s in specs:
        if not isinstance(s, StatSpec):
            raise ValueError(f"stat_specs: expected StatSpec, got {s!r}")
        if s.level not in LEVELS:
            raise ValueError(f"stat_specs: {s.name!r} has level {s.level!r}, expected one of {LEVELS}")
        if s.kind not in KINDS:
            raise ValueError(f"stat_specs: {s.name!r} has kind {s.kind!r}, expected one of {KINDS}")
    return specs
