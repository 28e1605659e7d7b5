"""noisydot_sbc: exact likelihoods and vectorized simulation-based calibration for the noise
levels of a noisy dot-product device.

Modules (one job each): ``simulate`` (true generative process), ``likelihoods`` (pure-JAX
densities), ``distributions`` (``NoisyDot``), ``models`` (latent / marginal / gaussian),
``priors``, ``inference`` (the inference methods: batched NUTS, quadrature), ``sbc`` (ranks and
uniformity statistics), ``diagnostics`` (MCMC diagnostics), ``identifiability`` (Fisher
information, degeneracy, design advice), ``results`` (xarray / netCDF I/O), ``plots``, ``study``
(the calibration study's summary), ``config`` (Hydra structured configs: imported here so that
Hydra's ``compose`` finds the schemas after ``import noisydot_sbc``), ``rundir`` (run folders)
and ``tasks`` (what ``run.py`` runs).
"""
__version__ = "0.1.0"

from . import config  # noqa: E402,F401  (registers the config schemas in Hydra's ConfigStore)
