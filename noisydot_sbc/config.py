"""The configuration: Hydra structured configs, the one source of every default, and their checks.

Every config group has a dataclass schema here, registered in Hydra's ConfigStore when this
module is imported (``run.py`` imports it before Hydra composes). The YAML files in ``conf/``
only select a schema (``defaults: [base_design, _self_]``) and state what differs from its
defaults, so a typo (``design.n_ob=5``) or a wrong type (``seed=abc``, ``sampler.dense_mass=maybe``)
is refused by Hydra while composing, and every value a task reads exists (no ``cfg.get(key,
default)`` in task code).

=========  =================================  =====================================================
group      schema (ConfigStore name)          options
=========  =================================  =====================================================
task       SBCTaskConfig (base_sbc_task),     sbc, fit, degeneracy
           FitTaskConfig (base_fit_task),
           DegeneracyTaskConfig (base_degeneracy_task)
model      ModelConfig (base_model)           latent, marginal, gaussian
prior      PriorConfig (base_prior)           every entry of :data:`noisydot_sbc.priors.PRIORS`
design     DesignConfig (base_design)         default (N = 200, M = 8), small (N = 50, M = 4)
sampler    the inference method's own frozen  nuts (``inference.nuts.NUTSConfig``), quadrature
           config (base_<method>)             (``inference.quadrature.QuadratureConfig``)
sbc        SBCConfig (base_sbc)               default, small
data       DataConfig (base_data)             sample
study      StudyConfig (node ``study``)       set by the cells of ``experiment=study`` (conf/study_cell/)
top level  Config (base_config)               seed, precision, progress, output_dir
=========  =================================  =====================================================

Values are checked by :func:`validate_config` before any work (every task calls it first; it
raises :class:`ConfigError`, a ValueError whose one-line message names the key).
"""
from __future__ import annotations

import dataclasses
import enum
import importlib
import importlib.util
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import priors as _priors


class ConfigError(ValueError):
    """A configuration value that cannot run; the message is one line naming the key."""


def _fail(key: str, message: str, value=MISSING):
    got = "" if value is MISSING else f", got {value!r}"
    raise ConfigError(f"{key} {message}{got}")


def _int(key, value, minimum=None):
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(key, "must be an integer", value)
    if minimum is not None and value < minimum:
        _fail(key, f"must be >= {minimum}", value)


def _number(key, value, positive=False, nonnegative=False):
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(key, "must be a finite number", value)
    if positive and not value > 0:
        _fail(key, "must be > 0", value)
    if nonnegative and value < 0:
        _fail(key, "must be >= 0", value)


# ----------------------------------------------------------------------------- vocabularies
class Precision(enum.StrEnum):
    float64 = "float64"
    float32 = "float32"


class XDist(enum.StrEnum):
    """How the design's inputs x are drawn (see :func:`noisydot_sbc.simulate.make_design`)."""

    normal = "normal"
    uniform = "uniform"
    magnitude = "magnitude"


class WDist(enum.StrEnum):
    """How the design's weights w are drawn (see :func:`noisydot_sbc.simulate.make_design`)."""

    normal = "normal"
    uniform = "uniform"
    ones = "ones"


# ----------------------------------------------------------------------------- task group
@dataclass
class SBCTaskConfig:
    """``task=sbc``: simulation-based calibration of one model under one prior (settings in ``sbc``)."""

    name: str = "sbc"
    reads_data: ClassVar[bool] = False  # the measured data (group ``data``) do not enter the results

    def validate(self):
        pass


@dataclass
class FitTaskConfig:
    """``task=fit``: fit the model to measured data (group ``data``)."""

    name: str = "fit"
    ppc_draws: int = 200  # posterior predictive replicates drawn for the checks
    fisher_sims: int = 32  # simulations for the expected Fisher information at the posterior median
    reads_data: ClassVar[bool] = True

    def validate(self):
        _int("task.ppc_draws", self.ppc_draws, 1)
        _int("task.fisher_sims", self.fisher_sims, 1)


@dataclass
class FacetConfig:
    n_obs: int = MISSING
    n_inputs: int = MISSING


@dataclass
class DegeneracyTaskConfig:
    """``task=degeneracy``: the identifiability map over design features."""

    name: str = "degeneracy"
    x_noise_lvl: float = 0.1  # true σ_x; σ_w = ratio · σ_x
    x_spread: List[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 3.0])  # spread of log|x_n|
    ratio: List[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0])
    facets: List[FacetConfig] = field(default_factory=lambda: [
        FacetConfig(200, 8), FacetConfig(50, 8), FacetConfig(200, 1)])
    replicates_per_cell: int = 2
    fisher_sims: int = 32
    fit: bool = True  # also fit the model to every cell (posterior contraction), not only the Fisher information
    reads_data: ClassVar[bool] = False

    def validate(self):
        _number("task.x_noise_lvl", self.x_noise_lvl, positive=True)
        for key in ("x_spread", "ratio", "facets"):
            if not getattr(self, key):
                _fail(f"task.{key}", "must not be empty")
        for v in self.x_spread:
            _number("task.x_spread", v, nonnegative=True)
        for v in self.ratio:
            _number("task.ratio", v, positive=True)
        for i, f in enumerate(self.facets):
            _int(f"task.facets[{i}].n_obs", f.n_obs, 1)
            _int(f"task.facets[{i}].n_inputs", f.n_inputs, 1)
        _int("task.replicates_per_cell", self.replicates_per_cell, 1)
        _int("task.fisher_sims", self.fisher_sims, 1)


TASKS = {"sbc": SBCTaskConfig, "fit": FitTaskConfig, "degeneracy": DegeneracyTaskConfig}


# ----------------------------------------------------------------------------- model, prior, design
@dataclass
class ModelConfig:
    """``model=latent|marginal|gaussian`` (see :mod:`noisydot_sbc.models`)."""

    name: str = MISSING

    def validate(self):
        from .models import MODELS

        if self.name not in MODELS:
            _fail("model.name", f"must be one of {sorted(MODELS)}", self.name)


@dataclass
class ScalePriorConfig:
    family: str = MISSING  # one of noisydot_sbc.priors.FAMILIES
    loc: float = 0.0
    scale: float = MISSING


@dataclass
class PriorConfig:
    """``prior=strong|weak|naive``: the options are :data:`noisydot_sbc.priors.PRIORS`."""

    name: str = MISSING
    x_noise_lvl: ScalePriorConfig = MISSING
    w_noise_lvl: ScalePriorConfig = MISSING
    negative_control: bool = False

    def validate(self):
        for p in ("x_noise_lvl", "w_noise_lvl"):
            sp = getattr(self, p)
            if sp.family not in _priors.FAMILIES:
                _fail(f"prior.{p}.family", f"must be one of {list(_priors.FAMILIES)}", sp.family)
            _number(f"prior.{p}.loc", sp.loc)
            _number(f"prior.{p}.scale", sp.scale, positive=True)

    @classmethod
    def of(cls, prior: "_priors.Prior") -> "PriorConfig":
        sp = lambda s: ScalePriorConfig(family=s.family, loc=float(s.loc), scale=float(s.scale))
        return cls(name=prior.name, x_noise_lvl=sp(prior.x_noise_lvl), w_noise_lvl=sp(prior.w_noise_lvl),
                   negative_control=bool(prior.negative_control))


@dataclass
class DesignConfig:
    """The simulated device design of ``task=sbc`` (``design=default``: N = 200, M = 8)."""

    name: str = MISSING
    n_obs: int = 200
    n_inputs: int = 8
    x_dist: XDist = XDist.normal
    x_scale: float = 1.0
    x_spread: float = 1.0  # only for x_dist=magnitude: spread of log|x_n| across observations (0 = degenerate)
    w_dist: WDist = WDist.normal
    w_scale: float = 1.0
    new_design_per_replicate: bool = True  # False: one design (drawn once) for every replicate
    y_noise: float = 0.0  # readout noise σ_y (known)
    shared_w_noise: bool = False  # weight noise drawn once per device instead of once per observation

    def validate(self):
        _int("design.n_obs", self.n_obs, 1)
        _int("design.n_inputs", self.n_inputs, 1)
        _number("design.x_scale", self.x_scale, positive=True)
        _number("design.x_spread", self.x_spread, nonnegative=True)
        _number("design.w_scale", self.w_scale, positive=True)
        _number("design.y_noise", self.y_noise, nonnegative=True)


# ----------------------------------------------------------------------------- sbc, data
def _default_quantities() -> list:
    from .quantities import DEFAULT

    return list(DEFAULT)


@dataclass
class SBCConfig:
    """Settings of ``task=sbc`` (``sbc=default``: 1000 replicates)."""

    name: str = MISSING
    num_replicates: int = 1000
    chunk_size: int = 100  # replicates fitted per compiled batch and written per chunk file
    num_ranks: int = 199  # L: thinned posterior draws per replicate; ranks lie in 0..L
    fisher_sims: int = 0  # > 0: expected Fisher information per replicate at the true values
    quantities: List[str] = field(default_factory=_default_quantities)  # test quantities (noisydot_sbc.quantities)
    # "exact": per replicate, the discrepancy of the fit to the quadrature posterior of the exact
    # (marginal) model for the same data (variables ref_*); "none": no reference
    reference: str = "none"
    # > 0: the reference only for replicates 0 .. reference_replicates - 1 (its quadrature of the
    # exact model costs more than a Gaussian fit); the others' ref_* stay NaN; 0: every replicate
    reference_replicates: int = 0

    def validate(self):
        if self.reference not in ("none", "exact"):
            _fail("sbc.reference", "must be 'none' or 'exact'", self.reference)
        _int("sbc.num_replicates", self.num_replicates, 1)
        _int("sbc.chunk_size", self.chunk_size, 1)
        _int("sbc.num_ranks", self.num_ranks, 1)
        _int("sbc.fisher_sims", self.fisher_sims, 0)
        _int("sbc.reference_replicates", self.reference_replicates, 0)
        from .quantities import get_quantities

        try:
            get_quantities(list(self.quantities))
        except ValueError as err:
            raise ConfigError(str(err)) from None


@dataclass
class DataConfig:
    """Measured data for ``task=fit``: netCDF (x(obs,input), w(input), y(obs)) or CSV (see README).

    Relative paths are relative to the directory ``run.py`` was started from (Hydra's original
    working directory), whatever ``hydra.run.dir`` is: see :func:`data_path`.
    """

    path: Optional[str] = "data/sample_measurements.nc"
    weights_path: Optional[str] = None  # CSV only: w in its own file
    y_noise: float = 0.0  # known readout noise of the measurements

    def validate(self):
        _number("data.y_noise", self.y_noise, nonnegative=True)


# ----------------------------------------------------------------------------- sampler group
def _omegaconf_type(tp):
    """A field type OmegaConf accepts: ``Literal[...]`` becomes an Enum of its values."""
    if typing.get_origin(tp) is typing.Literal:
        values = typing.get_args(tp)
        return enum.StrEnum("Choice", {str(v): str(v) for v in values}) if all(isinstance(v, str) for v in values) else Any
    return tp


def mutable_schema(method_config: type) -> type:
    """The Hydra schema of an inference method's frozen config dataclass: the same fields, types and
    defaults, not frozen (OmegaConf makes a frozen dataclass read-only, so command-line overrides
    could not be merged). The defaults stay those of ``method_config``; :func:`method_config_of`
    turns the composed node back into ``method_config``."""
    hints = typing.get_type_hints(method_config)
    fields = []
    for f in dataclasses.fields(method_config):
        if f.default is not dataclasses.MISSING:
            spec = field(default=f.default)
        elif f.default_factory is not dataclasses.MISSING:
            spec = field(default_factory=f.default_factory)
        else:
            spec = field(default=MISSING)
        fields.append((f.name, _omegaconf_type(hints[f.name]), spec))
    return dataclasses.make_dataclass(f"{method_config.__name__}Schema", fields)


def _method_configs() -> dict:
    """name -> the inference method's own frozen config dataclass, for every method of the one
    registry :data:`noisydot_sbc.inference.METHOD_CLASSES` (its import errors are not hidden)."""
    from .inference import METHOD_CLASSES, method_classes

    return {name: method_classes(name)[1] for name in METHOD_CLASSES}


METHOD_CONFIGS = _method_configs()


def method_config_of(sampler_cfg):
    """The inference method's own config object (e.g. ``NUTSConfig``) from the composed ``sampler``
    node, checked (``validate()``); :class:`ConfigError` naming the ``sampler.<field>`` key."""
    values = OmegaConf.to_container(sampler_cfg, resolve=True) if isinstance(sampler_cfg, DictConfig) else dict(
        dataclasses.asdict(sampler_cfg) if dataclasses.is_dataclass(sampler_cfg) else sampler_cfg)
    name = values.get("name")
    if name not in METHOD_CONFIGS:
        _fail("sampler.name", f"must be one of {sorted(METHOD_CONFIGS)}", name)
    cls = METHOD_CONFIGS[name]
    values = {k: (str(v) if isinstance(v, enum.Enum) else v) for k, v in values.items()}
    try:
        obj = cls(**values)
    except TypeError as err:
        raise ConfigError(f"sampler: {err}") from None
    try:
        out = obj.validate()
    except ValueError as err:
        # the method's messages name its own class ("NUTSConfig.thinning ..."): name the config key
        msg = re.sub(r"^_?[A-Za-z]*Config(Schema)?\.", "sampler.", str(err))
        if not msg.startswith("sampler"):
            msg = f"sampler: {msg}"
        raise ConfigError(msg) from None
    return obj if out is None else out


# ----------------------------------------------------------------------------- study cell
@dataclass
class StudyConfig:
    """Which cell of the calibration study a run is (``python run.py -m experiment=study``).

    Set by the ``study_cell`` options (conf/study_cell/*.yaml); outside the study ``cell`` is
    None. It names the run folder and never changes the results (it is not in the fingerprint).
    A cell may leave out designs where its fit is too costly: the run then writes
    ``left_out.txt`` (the reason) in its folder and fits nothing."""

    cell: Optional[str] = None  # e.g. "marginal-nuts-weak": model-inference-prior
    leave_out_designs: List[str] = field(default_factory=list)  # design names this cell does not run
    leave_out_reason: str = ""

    def validate(self):
        if self.leave_out_designs and not self.leave_out_reason.strip():
            _fail("study.leave_out_reason", "must say why study.leave_out_designs are left out")


def left_out(cfg) -> Optional[str]:
    """The reason the study leaves this run's cell out for its design, or None (run it)."""
    study = cfg.get("study") if hasattr(cfg, "get") else None
    if study is None or str(cfg.design.name) not in [str(d) for d in study.leave_out_designs]:
        return None
    return f"study cell {study.cell} leaves out design {cfg.design.name}: {study.leave_out_reason}"


# ----------------------------------------------------------------------------- top level
@dataclass
class Config:
    """The whole run: one option of every group plus the top-level keys below."""

    task: Any = MISSING
    model: ModelConfig = MISSING
    prior: PriorConfig = MISSING
    design: DesignConfig = MISSING
    sampler: Any = MISSING
    sbc: SBCConfig = MISSING
    data: DataConfig = MISSING
    seed: int = 0
    precision: Precision = Precision.float64  # float64 for accuracy; float32 is supported (faster on GPUs)
    progress: bool = True  # progress bar on long runs (does not change results)
    output_dir: Optional[str] = None  # outside Hydra (compose API, notebooks): the folder to write to
    host_devices: Optional[int] = None  # CPU only: split replicates over this many XLA host devices (parallel mode)
    compilation_cache: Optional[str] = None  # folder of JAX's persistent compilation cache (jobs of a sweep share compiles)
    study: StudyConfig = field(default_factory=StudyConfig)  # the study cell (experiment=study); no effect on results


def register() -> ConfigStore:
    """Register every schema and the prior options in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="task", name="base_sbc_task", node=SBCTaskConfig)
    cs.store(group="task", name="base_fit_task", node=FitTaskConfig)
    cs.store(group="task", name="base_degeneracy_task", node=DegeneracyTaskConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="prior", name="base_prior", node=PriorConfig)
    for prior in _priors.PRIORS.values():
        cs.store(group="prior", name=prior.name, node=PriorConfig.of(prior))
    cs.store(group="design", name="base_design", node=DesignConfig)
    cs.store(group="sbc", name="base_sbc", node=SBCConfig)
    cs.store(group="data", name="base_data", node=DataConfig)
    for name, cls in METHOD_CONFIGS.items():
        schema = cls if not getattr(cls, "__dataclass_params__").frozen else mutable_schema(cls)
        cs.store(group="sampler", name=f"base_{name}", node=schema)
    cs.store(group="hydra/launcher", name="local", node=local_launcher())
    return cs


def local_launcher() -> dict:
    """``hydra/launcher=local``, the launcher of ``experiment=study``: Hydra's joblib launcher (one
    job per core, ``hydra.launcher.n_jobs`` to change) when hydra-joblib-launcher is installed
    (``pip install -e ".[launchers]"``), else Hydra's basic launcher (one job after another). A
    defaults list cannot fall back on a missing plugin by itself, hence this node."""
    try:  # find_spec raises, not returns None, when no hydra_plugins package is installed at all
        joblib_installed = importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is not None
    except ModuleNotFoundError:
        joblib_installed = False
    if joblib_installed:
        return {"defaults": ["joblib", "_self_"], "n_jobs": -1}
    return {"defaults": ["basic", "_self_"]}


def _run_suffix(override_dirname: str) -> str:
    """``hydra.job.override_dirname`` as a suffix of the run folder name: '' or ',' + it, with '/'
    (from path values such as ``data.path=a/b.nc``) replaced so the folder stays one level."""
    s = str(override_dirname or "")
    return "," + s.replace(os.sep, "_") if s else ""


register()
if not OmegaConf.has_resolver("run_suffix"):
    OmegaConf.register_new_resolver("run_suffix", _run_suffix)


# ----------------------------------------------------------------------------- checks and helpers
def _to_object(node, key):
    try:
        return OmegaConf.to_object(node)
    except OmegaConfBaseException as err:
        full = getattr(err, "full_key", None) or key
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{full}: {first}") from None


def validate_config(cfg) -> None:
    """Check the whole composed config before any work; raises :class:`ConfigError` (one line, the key).

    Types and unknown keys are already refused by Hydra while composing (the schemas above); this
    checks the values, each group's own ``validate()``, the sampler through the inference method's
    own config (``NUTSConfig.validate()`` ...) and the cross-group rules (``sbc.num_ranks`` at most
    the posterior draws the sampler keeps)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    for key in ("task", "model", "prior", "design", "sampler", "sbc", "data"):
        if key not in cfg:
            _fail(key, "is missing from the config")
    _int("seed", cfg.seed, 0)
    if str(cfg.get("precision")) not in list(Precision):
        _fail("precision", f"must be one of {[str(p) for p in Precision]}", cfg.get("precision"))
    task_name = cfg.task.get("name")
    if task_name not in TASKS:
        _fail("task.name", f"must be one of {sorted(TASKS)}", task_name)
    task = _to_object(cfg.task, "task")
    if isinstance(task, dict):  # an untyped task node (a YAML file without its schema)
        try:
            task = TASKS[task_name](**task)
        except TypeError as err:
            raise ConfigError(f"task: {err}") from None
    task.validate()
    for key in ("model", "prior", "design", "sbc", "data"):
        obj = _to_object(cfg[key], key)
        if isinstance(obj, dict):
            schema = {"model": ModelConfig, "prior": PriorConfig, "design": DesignConfig, "sbc": SBCConfig,
                      "data": DataConfig}[key]
            obj = _to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg[key]), key)
        obj.validate()
    if cfg.get("host_devices") is not None:
        _int("host_devices", cfg.host_devices, 1)
    if cfg.get("study") is not None:
        study = OmegaConf.to_container(cfg.study, resolve=True) if isinstance(cfg.study, DictConfig) else cfg.study
        _to_object(OmegaConf.merge(OmegaConf.structured(StudyConfig), study), "study").validate()
    if TASKS[task_name].reads_data:
        for key, resolve in (("data.path", data_path), ("data.weights_path", weights_path)):
            p = resolve(cfg)
            if key == "data.path" and p is None:
                _fail(key, "must name a netCDF or CSV file of measurements (x, w, y)")
            if p is not None and not p.is_file():
                _fail(key, f"names no file ({p} does not exist)")
    method = method_config_of(cfg.sampler)
    draws = getattr(method, "num_draws", None)
    if task_name == "sbc" and draws is not None and cfg.sbc.num_ranks > draws:
        _fail("sbc.num_ranks", f"must be at most the posterior draws the sampler keeps ({draws})", cfg.sbc.num_ranks)


def reads_data(cfg) -> bool:
    """Whether the task reads the measured data (group ``data``); only then it enters the fingerprint."""
    return TASKS[str(cfg.task.name)].reads_data


def data_path(cfg) -> Optional[Path]:
    """``data.path`` as an absolute path: relative paths are taken from the directory the run was
    started in (Hydra's original working directory), not from ``hydra.run.dir``."""
    raw = cfg.data.path
    if raw is None or str(raw) == "":
        return None
    from hydra.utils import to_absolute_path

    return Path(to_absolute_path(str(raw)))


def weights_path(cfg) -> Optional[Path]:
    """``data.weights_path`` resolved like :func:`data_path`."""
    raw = cfg.data.weights_path
    if raw is None or str(raw) == "":
        return None
    from hydra.utils import to_absolute_path

    return Path(to_absolute_path(str(raw)))


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides=(), config_name: str = "config") -> DictConfig:
    """The config ``python run.py <overrides>`` would run, composed without running (tests,
    notebooks). Hydra's own ``compose`` works as well once this module is imported."""
    from hydra import compose as _compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return _compose(config_name=config_name, overrides=list(overrides))
