"""The calibration study's summary: every SBC cell's ``results.nc`` -> one table, verdicts, power,
identifiability, and the report ``docs/results.md`` (+ ``results.csv`` and figures).

One job: turn finished SBC runs into the study's findings; it runs no posterior fit. Inputs are
the Datasets written by the SBC task (one per cell of models x inference x priors x designs).
One module per part: :mod:`.power` (Holm's adjustment, the known defects and the detection power
of a replicate count), :mod:`.table` (a :class:`pandas.DataFrame` with a row per cell,
:func:`study_table`, with the family-wise verdicts and the power columns of :func:`add_power`;
the identifiability table), :mod:`.report` (findings and :func:`write_study_report`) and
:mod:`.callback` (:class:`StudySummary`, which runs the report at the end of a Hydra multirun).
Every public name is re-exported here: ``noisydot_sbc.study.StudySummary`` is the callback's
``_target_`` in ``conf/experiment/study*.yaml``.
"""
from .callback import StudySummary
from .power import DEFECTS, NO_DEFECT, Defect, DefectSampler, control_samplers, detection_power, holm_adjust
from .report import findings, write_study_report
from .table import (
    DESIGN_KEYS,
    EXACT_MODELS,
    REFERENCE_PREFIX,
    REFERENCE_VARS,
    STUDY_ALPHA,
    add_power,
    cell_identity,
    identifiability_table,
    reference_summary,
    select_control,
    study_table,
)

__all__ = ["STUDY_ALPHA", "Defect", "DEFECTS", "NO_DEFECT", "holm_adjust", "DefectSampler", "detection_power",
           "control_samplers", "select_control", "cell_identity", "reference_summary", "study_table", "add_power",
           "identifiability_table", "findings", "write_study_report", "StudySummary", "EXACT_MODELS",
           "REFERENCE_PREFIX", "REFERENCE_VARS", "DESIGN_KEYS"]
