"""Identifiability of the two noise levels: Fisher information, posterior degeneracy, design ranking.

"Can σ_x and σ_w be told apart from my data?"  Three complementary answers:

1. Before any data: the expected Fisher information of θ = (log σ_x, log σ_w) for a design
   (x, w) at given noise levels (:func:`expected_fisher_information`, Monte Carlo over the TRUE
   process, any per-observation log-density; :func:`gaussian_fisher_information`, closed form
   for the moment-matched Gaussian).  Its weakest eigenvector is the direction of the ridge
   along which the data cannot distinguish the two noise sources.
2. After a fit: :func:`posterior_degeneracy` (one posterior) and
   :func:`posterior_degeneracy_batch` (an SBC run, leading replicate axis) report posterior
   correlation, contraction against the prior, z-scores, multimodality and prior-domination flags.
3. Choosing a design: :func:`rank_designs` orders candidate input sets by the information they
   carry about σ_w (accounting for the nuisance σ_x) or by log det of the information, at a point
   or averaged over prior draws (Bayesian design).

One module per job (imports run down this list): :mod:`.fisher` (answer 1), :mod:`.designs`
(answer 3, on top of :mod:`.fisher`), :mod:`.degeneracy` (answer 2).  Every name the project uses
is re-exported here (``identifiability.X``).

Formulas and thresholds are explained in docs/identifiability.md.
"""
from .degeneracy import (
    CHAIN_SEPARATION_THRESHOLD,
    PRIOR_DOMINATED_THRESHOLD,
    RHAT_THRESHOLD,
    SIGN_FRACTION_THRESHOLD,
    posterior_degeneracy,
    posterior_degeneracy_batch,
    prior_variances,
)
from .designs import rank_designs
from .fisher import (
    THETA_NAMES,
    FisherResult,
    _variance_gradients,  # noqa: F401 - the closed form's gradients, checked by tests/test_identifiability.py
    expected_fisher_information,
    gaussian_fisher_information,
    summarize_information,
)

__all__ = ["THETA_NAMES", "FisherResult", "summarize_information", "gaussian_fisher_information",
           "expected_fisher_information", "rank_designs", "RHAT_THRESHOLD", "CHAIN_SEPARATION_THRESHOLD",
           "SIGN_FRACTION_THRESHOLD", "PRIOR_DOMINATED_THRESHOLD", "prior_variances", "posterior_degeneracy",
           "posterior_degeneracy_batch"]
