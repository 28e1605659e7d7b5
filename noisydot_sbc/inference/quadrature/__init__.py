"""The quadrature inference method (see ``method``)."""
from .method import *  # noqa: F401,F403
from .method import __all__, _GaussianEvaluator, cdf_quantiles, correction_error, warp  # noqa: F401
