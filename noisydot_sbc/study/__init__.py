"""The calibration study's summary; see the modules for each job."""
from .report import *  # noqa: F401,F403
