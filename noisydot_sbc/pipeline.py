"""Deprecated entry point, kept until its last importers move: the tasks live in
:mod:`noisydot_sbc.tasks` (one module per task: ``tasks.sbc``, ``tasks.fit``, ``tasks.degeneracy``)."""
from .tasks import run  # noqa: F401
from .tasks.degeneracy import run_degeneracy  # noqa: F401
from .tasks.fit import run_fit  # noqa: F401
from .tasks.sbc import run_sbc  # noqa: F401
