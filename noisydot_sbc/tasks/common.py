"""Steps every task shares: precision, the run folder, the model, prior and inference method of a
config, one fit, and the config text stored with the results."""
from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from ..models import PARAMS

log = logging.getLogger("noisydot_sbc.tasks")


def configure_platform(cfg) -> None:
    """Precision and host devices must be set before JAX creates its first array."""
    import jax

    precision = str(cfg.get("precision", "float64"))
    if precision not in ("float64", "float32"):
        raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")
    jax.config.update("jax_enable_x64", precision == "float64")
    cache = cfg.get("compilation_cache")
    if cache:  # compiled programs persist across processes: the jobs of a sweep compile each shape once
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    host_devices = cfg.get("host_devices")
    if host_devices:
        from ..inference.driver import configure_host_devices

        configure_host_devices(int(host_devices))


def float_dtype():
    """The float dtype of this run (float64 when x64 is enabled, else float32)."""
    import jax
    import jax.numpy as jnp

    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def to_container(node) -> dict:
    """A config node as plain Python data (resolved)."""
    from omegaconf import OmegaConf

    if isinstance(node, dict):
        return node
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def config_yaml(cfg) -> str:
    """The resolved config as YAML (stored in every result file's attrs)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(to_container(cfg)), resolve=True)


def load_prior(cfg):
    from ..priors import get_prior

    return get_prior(to_container(cfg.prior))


def load_model(cfg, prior, y_noise: float):
    """The :class:`~noisydot_sbc.models.Model` named ``cfg.model.name`` with ``prior`` and ``y_noise``."""
    from ..models import build_model

    return build_model(str(cfg.model.name), prior=prior, y_noise=float(y_noise),
                       shared_w_noise=bool(cfg.design.shared_w_noise))


def inference_method(cfg):
    """The inference method configured in ``cfg.sampler`` (``inference.get_method``)."""
    from ..inference import get_method

    return get_method(cfg.sampler)


def posterior_draws(posterior, keep=None) -> dict:
    """The draws of the inferred parameters, name -> (S, chain, draw) numpy arrays (rows ``keep``)."""
    sl = slice(None) if keep is None else keep
    return {p: np.asarray(posterior.samples[p])[sl] for p in PARAMS}


class FailureLog(NamedTuple):
    """Per replicate: ``failed`` (S,) bool and the first reason ``error`` (S,) ("" where fine)."""

    failed: np.ndarray
    error: list

    @classmethod
    def of(cls, posterior, n: int):
        return cls(np.asarray(posterior.failed, bool)[:n].copy(), [str(e) for e in list(posterior.error)[:n]])

    def mark(self, bad, reason) -> None:
        """Mark the replicates ``bad`` (S,) bool failed with ``reason`` unless they already
        failed (the first reason is kept)."""
        self.mark_each([reason if b else "" for b in np.asarray(bad, bool)])

    def mark_each(self, reasons, prefix: str = "") -> None:
        """Mark failed every replicate whose entry of ``reasons`` (one str per replicate) is not
        empty, with ``prefix + reason``, unless it already failed."""
        for i, r in enumerate(reasons):
            if r and not self.failed[i]:
                self.failed[i] = True
                self.error[i] = prefix + str(r)


class ProgressBar:
    """A tqdm bar over replicates (``progress: false`` hides it) that also moves while a batch is
    being fitted: ``within(n)`` is the ``progress`` callback of a batch of ``n`` fits, ``advance(n)``
    counts them done."""

    def __init__(self, cfg, total, initial, desc):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="fit", desc=desc, disable=not bool(cfg.get("progress", True)))
        self.base = initial

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def within(self, n):
        def report(fraction):
            self.bar.n = round(self.base + float(fraction) * n, 1)
            self.bar.refresh()
        return report

    def advance(self, n):
        self.base += n
        self.bar.n = self.base
        self.bar.refresh()
