"""Model -> potential: a NumPyro model as ``value_and_grad(z, data)`` on a flat unconstrained vector.

:func:`build_potential` traces the model once with :func:`numpyro.infer.util.initialize_model`
(``dynamic_args=True``), so the potential is a function of (unconstrained parameters,
per-replicate data) and one compiled program serves every replicate. Data-only work (e.g. x·w
and Σ x²w² in the Gaussian model) is split off by :func:`hoist` and computed once per replicate.
Used by every inference method (NUTS, quadrature), so all see the same log density.

Usage for one replicate ``d`` (a dict of arrays without the replicate axis)::

    pot = build_potential(model, data)            # data with a leading replicate axis
    pe, grad = pot.value_and_grad(z, pot.prepare(d))   # pe = -log density (Jacobian included)
    sites = constrain_full(z, pot)                # {site: constrained value} of the kept sites
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.distributions.transforms import biject_to
from numpyro.infer.initialization import init_to_median
from numpyro.infer.util import initialize_model

__all__ = ["Potential", "build_potential", "hoist", "constrain", "constrain_full", "model_fn", "model_cache_key",
           "resolve_keep_sites"]


class Potential(NamedTuple):
    value_and_grad: Callable  # (z_flat, prepared) -> (potential energy, grad)
    prepare: Callable  # data of one replicate -> what value_and_grad takes (hoisted data-only work)
    dim: int  # number of unconstrained coordinates
    dtype: object
    keep: dict  # kept site -> (flat indices array, site shape, transform to the constrained space)
    unravel: Callable  # flat z -> {site: unconstrained value}
    z_center: jax.Array  # unconstrained prior median (init_to_median): the centre of the initial points


def model_fn(model) -> Callable:
    """The NumPyro callable of ``model``: a :class:`noisydot_sbc.models.Model` (its ``fn``) or a callable."""
    fn = getattr(model, "fn", None)
    if fn is not None and callable(fn) and hasattr(model, "params"):
        return fn
    if not callable(model):
        raise ValueError(f"model must be a NumPyro model callable or a models.Model, got {type(model).__name__}")
    return model


def model_cache_key(model):
    """A hashable key equal for equal models (a ``functools.partial`` by its function and arguments)."""
    fn = model_fn(model)
    if isinstance(fn, partial):
        try:
            key = (fn.func, fn.args, tuple(sorted(fn.keywords.items())))
            hash(key)
            return key
        except TypeError:
            return fn
    return fn


def resolve_keep_sites(model, keep_sites=None) -> tuple:
    """Sites whose draws are stored: ``keep_sites``, else the model's ``params`` (a Model), else
    :data:`noisydot_sbc.models.PARAMS`."""
    if keep_sites is None:
        params = getattr(model, "params", None)
        if params is None or not hasattr(model, "fn"):
            from ..models import PARAMS

            params = PARAMS
        keep_sites = params
    if isinstance(keep_sites, str):
        raise ValueError(f"keep_sites must be a sequence of site names, got the string {keep_sites!r}")
    return tuple(keep_sites)


def build_potential(model, data: dict, keep_sites=None, drop_sites=None) -> Potential:
    """Trace ``model`` on the first replicate whose data admits a valid initial point.

    Kept sites (whose draws a driver stores): ``drop_sites`` given -> every sample site except
    those; else the sites of :func:`resolve_keep_sites` that the model has (ValueError if none)."""
    fn = model_fn(model)
    S = next(iter(data.values())).shape[0]
    last_err = None
    for s in range(min(S, 8)):
        try:
            info = initialize_model(
                jax.random.PRNGKey(s), fn, model_kwargs={k: v[s] for k, v in data.items()}, dynamic_args=True,
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
    if drop_sites is not None:
        names = [n for n in sorted(z_proto) if n not in tuple(drop_sites)]
    else:
        wanted = resolve_keep_sites(model, keep_sites)
        names = [n for n in sorted(z_proto) if n in wanted]
        if not names:
            raise ValueError(
                f"keep_sites: none of {list(wanted)} is a latent sample site of the model (sites: {sorted(z_proto)})"
            )
    keep = {}
    for name in names:
        site = info.model_trace[name]
        idx = np.asarray(index_tree[name]).astype(np.int64).reshape(-1)
        keep[name] = (idx, tuple(np.shape(site["value"])), biject_to(site["fn"].support))

    def potential(z, data):
        return potential_gen(**data)(unravel(z))

    vg = jax.value_and_grad(potential)
    prepare, vg_hoisted = hoist(vg, flat, {k: v[0] for k, v in data.items()})
    return Potential(vg_hoisted, prepare, dim, dtype, keep, unravel, flat)


def hoist(vg, z_proto, data_one):
    """Split ``vg(z, data)`` into ``prepare(data)`` (everything that does not depend on z: e.g.
    x·w and Σ x²w² in the Gaussian model) and ``vg_h(z, prepared)``, by partial evaluation of the
    jaxpr with z unknown. The sampler loop then never recomputes data-only terms (XLA's loop-
    invariant code motion did not hoist them out of the nested while loop). Falls back to the
    unsplit function if the split fails or does not reproduce ``vg`` on the prototype.

    Hand-written because JAX has no public API for this split; it uses
    ``jax._src.interpreters.partial_eval``, and the fallback keeps results right if that moves."""
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


def kept_indices(pot: Potential) -> np.ndarray:
    """Flat indices of the kept sites' coordinates, in the order :func:`constrain` reads them."""
    return np.concatenate([v[0] for v in pot.keep.values()]) if pot.keep else np.zeros(0, np.int64)


def constrain(z_kept, pot: Potential) -> dict:
    """Unconstrained kept-site coordinates (..., K) (see :func:`kept_indices`) -> {site: constrained array}."""
    out, start = {}, 0
    lead = z_kept.shape[:-1]
    for name, (idx, shape, transform) in pot.keep.items():
        part = z_kept[..., start : start + idx.size]
        start += idx.size
        out[name] = transform(part.reshape(lead + shape))
    return out


def constrain_full(z, pot: Potential) -> dict:
    """Full flat unconstrained vectors (..., dim) -> {kept site: constrained array}."""
    return constrain(z[..., kept_indices(pot)], pot)
