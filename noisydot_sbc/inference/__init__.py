"""Inference methods behind one interface: ``get_method(cfg).fit(key, model, data) -> Posterior``.

* :class:`StatSpec`: a statistic a method declares it records (ArviZ name, level, kind).
* :class:`Posterior`: what every method returns (draws, declared stats, failures as data).
* :class:`InferenceMethod`: the protocol (``name``, ``fit(key, model, data, progress=None)``).
* :func:`get_method`: ``"nuts"`` -> :class:`NUTS`, ``"quadrature"`` -> ``Quadrature``.

Modules: ``kernel`` (the MCMC step-kernel interface), ``nuts`` (step-wise NUTS kernel, its
config and method), ``rng`` (counter RNG), ``potential`` (model -> potential), ``driver``
(batched runs of any kernel: modes, cache, failures, progress), ``quadrature``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from .kernel import Kernel, StatSpec


class Posterior(NamedTuple):
    """The result of :meth:`InferenceMethod.fit` for S replicates."""

    samples: dict  # parameter site -> (S, chain, draw) constrained draws (NaN where failed)
    sample_stats: dict  # draw-level declared stats -> (S, chain, draw)
    fit_stats: dict  # replicate-level declared stats -> (S,)
    stat_specs: tuple  # StatSpec for every key of sample_stats and fit_stats
    failed: np.ndarray  # (S,) bool
    error: list  # (S,) str, "" where fine
    inference: str  # "nuts" | "quadrature" | ...
    info: dict  # method details, e.g. {"chain_method": "vectorized", "max_tree_depth": 10}
    independent_draws: bool  # True: exact iid posterior draws (no thinning, no R-hat needed)
    wall_time: float
    compile_time: float


@runtime_checkable
class InferenceMethod(Protocol):
    name: str

    def fit(self, key, model, data: dict, progress=None) -> Posterior:
        """``model``: a ``models.Model`` (or a NumPyro callable where the method allows);
        ``data``: dict of arrays with a leading replicate axis S; ``progress``: callable(fraction) or None."""
        ...


from .nuts import NUTS, NUTSConfig, fit_batch  # noqa: E402  (nuts imports Posterior from here lazily)

#: The one registry of inference methods: ``sampler=<name>`` -> (module, method class, config class).
#: The Hydra schema of ``sampler=<name>`` (config.py), get_method and the CLI all read it; adding a
#: method is its module, one line here and ``conf/sampler/<name>.yaml``.
METHOD_CLASSES = {
    "nuts": ("noisydot_sbc.inference.nuts", "NUTS", "NUTSConfig"),
    "quadrature": ("noisydot_sbc.inference.quadrature", "Quadrature", "QuadratureConfig"),
}
METHODS = tuple(METHOD_CLASSES)


def method_classes(name: str):
    """(method class, config class) of the method registered as ``name`` (imported on first use)."""
    import importlib

    if name not in METHOD_CLASSES:
        raise ValueError(f"sampler name must be one of {METHODS}, got {name!r}")
    module, method, config = METHOD_CLASSES[name]
    mod = importlib.import_module(module)
    return getattr(mod, method), getattr(mod, config)


def get_method(sampler_cfg, **options) -> InferenceMethod:
    """The inference method for ``sampler_cfg``: a name (``"nuts"``, ``"quadrature"``) with
    ``options`` (the config's fields), a config dataclass (``NUTSConfig``/``QuadratureConfig``),
    or a mapping / DictConfig with a ``name`` key and the config's fields."""
    if isinstance(sampler_cfg, str):
        fields = dict(options, name=sampler_cfg)
    elif dataclasses.is_dataclass(sampler_cfg) and not isinstance(sampler_cfg, type):
        fields = dict(dataclasses.asdict(sampler_cfg), **options)
    elif isinstance(sampler_cfg, Mapping) or hasattr(sampler_cfg, "items"):
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(sampler_cfg, DictConfig):
                sampler_cfg = OmegaConf.to_container(sampler_cfg, resolve=True)
        except ImportError:  # omegaconf is optional here
            pass
        fields = dict(dict(sampler_cfg.items()), **options)
    else:
        raise ValueError(f"sampler_cfg must be a name, a config dataclass or a mapping, got {type(sampler_cfg).__name__}")
    name = fields.get("name")
    if not isinstance(name, str):
        raise ValueError(f"sampler_cfg.name must be one of {METHODS}, got {name!r}")
    cls, config_cls = method_classes(name)
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"sampler_cfg: unknown field(s) {unknown} for {name!r} (known: {sorted(known)})")
    return cls(config_cls(**fields))


__all__ = ["StatSpec", "Posterior", "InferenceMethod", "Kernel", "get_method", "NUTS", "NUTSConfig", "fit_batch",
           "METHODS"]
