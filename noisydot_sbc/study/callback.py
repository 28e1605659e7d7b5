"""The Hydra callback of the study: at the end of a multirun, write the study's report.

One job: hook :func:`~noisydot_sbc.study.report.write_study_report` into Hydra, so that
``python run.py -m experiment=study`` ends with the report. :class:`StudySummary` is registered
as ``_target_: noisydot_sbc.study.StudySummary`` (``conf/experiment/study*.yaml``; the package
re-exports it) and resolves the sweep and docs folders against the directory the command was
started in.
"""
from __future__ import annotations

from pathlib import Path

from .report import write_study_report
from .table import STUDY_ALPHA

__all__ = ["StudySummary"]


try:  # Hydra is a dependency of the project; the callback base class is optional at import time
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object


class StudySummary(_Callback):
    """Hydra callback: at the end of a multirun, :func:`write_study_report` on the sweep folder.

    Registered in a config as ``hydra.callbacks.study_summary: {_target_:
    noisydot_sbc.study.StudySummary, docs_dir: docs}``; a relative ``docs_dir`` is taken from
    the directory the command was started in."""

    def __init__(self, docs_dir: str = "docs", alpha: float = STUDY_ALPHA, n_resamples: int = 200,
                 fisher_sims: int = 32) -> None:
        if not isinstance(docs_dir, str) or not docs_dir:
            raise ValueError(f"docs_dir must be a non-empty folder path, got {docs_dir!r}")
        self.docs_dir, self.alpha, self.n_resamples, self.fisher_sims = docs_dir, alpha, n_resamples, fisher_sims

    def on_multirun_end(self, config, **kwargs) -> None:
        import logging

        sweep = Path(str(config.hydra.sweep.dir))
        cwd = Path(str(config.hydra.runtime.cwd)) if config.hydra.get("runtime") else Path.cwd()
        sweep = sweep if sweep.is_absolute() else cwd / sweep
        docs = Path(self.docs_dir)
        docs = docs if docs.is_absolute() else cwd / docs
        out = write_study_report(sweep, docs, alpha=self.alpha, n_resamples=self.n_resamples,
                                 fisher_sims=self.fisher_sims)
        logging.getLogger(__package__).info("study summary: %s", ", ".join(str(p) for p in out["paths"].values()))
