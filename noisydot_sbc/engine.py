"""Deprecated: the batched NUTS engine moved to :mod:`noisydot_sbc.inference` (kernel, nuts, rng,
potential, driver). This module re-exports the old names until nothing imports it."""
from __future__ import annotations

from .inference.driver import (  # noqa: F401
    CHAIN_METHODS,
    INIT_ATTEMPTS,
    INIT_RADIUS,
    cache_info,
    clear_cache,
    configure_host_devices,
    resolve_chain_method,
)
from .inference.nuts import (  # noqa: F401
    MAX_DELTA_ENERGY,
    STAT_NAMES,
    FitResult,
    NUTSConfig,
    NUTSInfo,
    NUTSState,
    build_kernel,
)
from .inference.nuts import fit_batch as _fit_batch
from .inference.potential import build_potential as _model_spec_new
from .inference.rng import threefry2x32  # noqa: F401
from .inference.rng import uniforms as _uniforms  # noqa: F401


def fit_batch(key, model, data: dict, config: NUTSConfig = NUTSConfig(), drop_sites=("u",)) -> FitResult:
    """The old entry point: every sample site but ``drop_sites`` is stored (default: all but ``u``)."""
    return _fit_batch(key, model, data, config, drop_sites=tuple(drop_sites or ()))


def _model_spec(model, data, drop_sites):
    return _model_spec_new(model, data, drop_sites=tuple(drop_sites or ()))
