"""noisydot_sbc: exact likelihoods and vectorized simulation-based calibration for the noise
levels of a noisy dot-product device.

Modules (one job each): ``simulate`` (true generative process), ``likelihoods`` (pure-JAX
densities), ``distributions`` (``NoisyDot``), ``models`` (latent / marginal / gaussian),
``priors``, ``engine`` (vectorized NUTS), ``sbc`` (ranks and uniformity statistics),
``diagnostics`` (MCMC diagnostics), ``identifiability`` (Fisher information, degeneracy, design
advice), ``results`` (xarray / netCDF I/O), ``plots`` and ``pipeline`` (Hydra tasks).
"""
__version__ = "0.1.0"
