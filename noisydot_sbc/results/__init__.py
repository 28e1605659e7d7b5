"""Results I/O (the only package that imports xarray); see the modules for each job."""
from .schema import *  # noqa: F401,F403
