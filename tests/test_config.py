"""The configuration: every group composes, every bad value is refused before any work with one
line naming its key (issue 12 item 6), and the schemas are the one source of the defaults."""
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from noisydot_sbc import config
from noisydot_sbc.config import ConfigError, compose, validate_config

ROOT = Path(__file__).resolve().parents[1]

# (override, the key the one-line message must name): values Hydra's types accept but that cannot run
BAD_VALUES = [
    ("sbc.num_replicates=0", "sbc.num_replicates"),
    ("sbc.num_replicates=-4", "sbc.num_replicates"),
    ("sbc.chunk_size=0", "sbc.chunk_size"),
    ("sampler.target_accept_prob=1.5", "sampler.target_accept_prob"),
    ("sampler.max_tree_depth=0", "sampler.max_tree_depth"),
    ("sampler.chain_method=foo", "sampler.chain_method"),
    ("sampler.num_warmup=-1", "sampler.num_warmup"),
    ("design.n_obs=0", "design.n_obs"),
    ("design.n_inputs=0", "design.n_inputs"),
    ("sampler.thinning=0", "sampler.thinning"),  # was a ZeroDivisionError
    ("sampler.num_chains=0", "sampler.num_chains"),  # was blamed on sbc.num_ranks
    ("sampler.num_samples=0", "sampler.num_samples"),  # was blamed on sbc.num_ranks
    ("sbc.num_ranks=0", "sbc.num_ranks"),  # failed only after the first chunk was fitted
    ("design.y_noise=-1", "design.y_noise"),  # failed only after the first chunk was fitted
    ("sbc.num_ranks=601", "sbc.num_ranks"),  # more ranks than the 2 x 300 draws kept
    ("sbc.quantities=[]", "sbc.quantities"),
    ("sbc.quantities=[x_noise_lvl,foo]", "sbc.quantities"),
    ("sbc.quantities=[x_noise_lvl,x_noise_lvl]", "sbc.quantities"),
    ("seed=-1", "seed"),
    ("prior.x_noise_lvl.scale=0", "prior.x_noise_lvl.scale"),
    ("prior.w_noise_lvl.family=cauchy", "prior.w_noise_lvl.family"),
    ("model.name=exact", "model.name"),
    ("task=fit task.ppc_draws=0", "task.ppc_draws"),
    ("task=degeneracy task.ratio=[]", "task.ratio"),
    ("host_devices=0", "host_devices"),
    ("task=fit data.path=no/such/file.nc", "data.path"),
    ("task=fit data.path=null", "data.path"),
]
# wrong types and unknown keys: refused by Hydra while composing (the schemas)
BAD_TYPES = [
    ("design.x_dist=foo", "design.x_dist"),
    ("sampler.dense_mass=maybe", "sampler.dense_mass"),  # ran as True before
    ("seed=abc", "seed"),  # a bare int() error before
    ("design.n_ob=5", "design.n_ob"),
    ("sbc.num_replicates=1.5", "sbc.num_replicates"),
    ("precision=float16", "precision"),
]


@pytest.mark.parametrize("override,key", BAD_VALUES)
def test_bad_value_is_one_line_naming_the_key(override, key):
    cfg = compose(override.split())
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(key), msg


@pytest.mark.parametrize("override,key", BAD_TYPES)
def test_bad_type_or_key_is_refused_while_composing(override, key):
    with pytest.raises(ConfigCompositionException) as err:
        compose([override])
    assert key in str(err.value) or key in str(err.value.__cause__)


@pytest.mark.parametrize("overrides", [
    [], ["task=fit"], ["task=degeneracy"], ["model=latent", "prior=weak"], ["model=gaussian", "prior=naive"],
    ["design=default", "sbc=default"], ["experiment=three_models"], ["experiment=degeneracy_map"],
    ["sampler=quadrature", "model=gaussian"],
])
def test_shipped_configs_validate(overrides):
    if "sampler=quadrature" in overrides and "quadrature" not in config.METHOD_CONFIGS:
        pytest.skip("the quadrature method is not in this tree")
    if "sampler=quadrature" in overrides and not (ROOT / "conf" / "sampler" / "quadrature.yaml").exists():
        overrides = ["sampler=base_quadrature", "model=gaussian"]
    validate_config(compose(overrides))


def test_experiments_say_what_they_run():
    """design=default is the documented N = 200, M = 8; the experiments run what they announce."""
    d = compose(["design=default"]).design
    assert (d.n_obs, d.n_inputs) == (200, 8)
    small = compose([]).design
    assert (small.n_obs, small.n_inputs) == (50, 4)
    three = compose(["experiment=three_models"])
    assert (three.design.n_obs, three.design.n_inputs, three.sbc.num_replicates) == (200, 8, 1000)
    assert (three.sampler.num_warmup, three.sampler.num_samples) == (500, 1000)
    deg = compose(["experiment=degeneracy_map"])
    assert deg.task.name == "degeneracy" and deg.model.name == "gaussian"
    assert [(f.n_obs, f.n_inputs) for f in deg.task.facets] == [(200, 8), (50, 8), (200, 1)]


def test_every_key_a_task_reads_exists():
    """No defaults hidden in task code: the keys once read with cfg.get(key, default) are in the schemas."""
    cfg = compose([])
    assert cfg.design.new_design_per_replicate is True and cfg.design.shared_w_noise is False
    assert cfg.sbc.fisher_sims == 0 and cfg.host_devices is None and cfg.data.weights_path is None
    assert list(cfg.sbc.quantities) == ["x_noise_lvl", "w_noise_lvl", "log_lik", "w_over_x"]
    fit = compose(["task=fit"]).task
    assert (fit.fisher_sims, fit.ppc_draws) == (32, 200)
    assert compose(["task=degeneracy"]).task.fit is True


def test_sampler_defaults_are_the_method_config():
    """The sampler group's schema is the inference method's own dataclass (one source of defaults)."""
    import dataclasses

    cls = config.METHOD_CONFIGS["nuts"]
    cfg = compose(["sampler.num_warmup=300", "sampler.num_samples=300"]).sampler
    for f in dataclasses.fields(cls):
        if f.name not in ("num_warmup", "num_samples"):
            assert cfg[f.name] == f.default, f.name
    obj = config.method_config_of(cfg)
    assert isinstance(obj, cls) and obj.num_warmup == 300


def test_data_path_is_relative_to_the_start_directory(tmp_path, monkeypatch):
    cfg = compose(["task=fit"])
    assert config.data_path(cfg) == ROOT / "data" / "sample_measurements.nc"
    monkeypatch.chdir(tmp_path)
    assert config.data_path(cfg) == tmp_path / "data" / "sample_measurements.nc"


@pytest.mark.parametrize("override,status,key", [
    ("sbc.num_replicates=0", 2, "sbc.num_replicates"),
    ("sampler.thinning=0", 2, "sampler.thinning"),
    ("seed=abc", 1, "seed"),
])
def test_cli_refuses_before_any_work(tmp_path, override, status, key):
    """`python run.py <bad>`: no traceback, the key named, a non-zero exit, and nothing written."""
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), override, "progress=false",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == status, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and key in proc.stderr
    if status == 2:  # our message: exactly one line
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
        assert proc.stderr.startswith("config error: " + key)
    assert not (tmp_path / "run" / "chunks").exists()  # no fingerprint, no chunk store


# ----------------------------------------------------------------------------- the study (experiment=study)
STUDY_CELLS = sorted(p.stem for p in (ROOT / "conf" / "study_cell").glob("*.yaml"))
EXACT_NUTS = ("latent_nuts_strong", "latent_nuts_weak", "marginal_nuts_strong", "marginal_nuts_weak")


def _sweep_values(cfg, key):
    return [v.strip() for v in str(cfg.hydra.sweeper.params[key]).split(",")]


@pytest.fixture(scope="module")
def study_runs():
    """{(cell, design): composed config with hydra} for every job of `python run.py -m experiment=study`."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        base = hcompose("config", overrides=["experiment=study"], return_hydra_config=True)
        cells, designs = _sweep_values(base, "study_cell"), _sweep_values(base, "design")
        runs = {(c, d): hcompose("config", overrides=["experiment=study", f"study_cell={c}", f"design={d}"],
                                 return_hydra_config=True) for c in cells for d in designs}
    return base, cells, designs, runs


def test_study_sweeps_every_cell_and_study_design(study_runs):
    """The sweep is every file of conf/study_cell/ x every conf/design/study_*.yaml (none forgotten)."""
    base, cells, designs, _ = study_runs
    assert sorted(cells) == STUDY_CELLS and len(cells) == 11
    assert sorted(designs) == sorted(p.stem for p in (ROOT / "conf" / "design").glob("study_*.yaml"))
    assert base.hydra.mode.name == "MULTIRUN"
    cb = base.hydra.callbacks.study_summary
    assert cb._target_ == "noisydot_sbc.study.StudySummary" and cb.docs_dir == "docs"


def test_study_cells_run_what_their_names_say(study_runs):
    """Every job validates; a cell file <model>_<inference>_<prior> sets exactly those; the naive
    prior (the negative control) only on Gaussian-NUTS; replicates as the study states them."""
    _, cells, designs, runs = study_runs
    for (c, d), cfg in runs.items():
        validate_config(cfg)
        model, inference, prior = c.split("_")
        assert (cfg.model.name, cfg.sampler.name, cfg.prior.name, cfg.design.name) == (model, inference, prior, d)
        assert cfg.study.cell == f"{model}-{inference}-{prior}"
        assert cfg.task.name == "sbc" and cfg.progress is False
        n = cfg.sbc.num_replicates
        expected = 200 if prior == "naive" else 300 if (inference == "quadrature" or model == "gaussian") else 100
        if c == "marginal_quadrature_weak":
            expected = 200
        assert n == expected, (c, n)
        # the weak prior reaches heavy noise: every weak-prior cell runs at N = 50 (the same replicates)
        if prior == "weak" and config.left_out(cfg) is None:
            assert cfg.design.n_obs == 50, c
        # the exact reference for the first K replicates of the Gaussian-NUTS cells (cost), all of the others
        k = {"gaussian_nuts_strong": 100, "gaussian_nuts_weak": 25}.get(c, 0)
        assert cfg.sbc.reference_replicates == k, c
        assert cfg.sbc.num_ranks == 99
        # every NUTS fit of a cell is compared with the exact posterior (not the naive control)
        assert cfg.sbc.reference == ("exact" if inference == "nuts" and prior != "naive" else "none"), c
        if inference == "nuts":
            assert (cfg.sampler.target_ess, cfg.sampler.num_samples) == (100, 200), c
    assert [c for c in cells if c.endswith("_naive")] == ["gaussian_nuts_naive"]
    assert {c.split("_")[0] for c in cells} == {"latent", "marginal", "gaussian"}
    assert set(EXACT_NUTS) <= set(cells) and {"marginal_quadrature_strong", "gaussian_quadrature_weak"} <= set(cells)


def test_study_designs(study_runs):
    """M in {1, 2, 8} at N = 200 without readout noise, one with readout noise, one degenerate;
    a cell's per-model N (it comes after the design) wins over the design's."""
    _, _, designs, runs = study_runs
    d = {name: runs[("gaussian_nuts_strong", name)].design for name in designs}
    plain = [x for x in d.values() if x.y_noise == 0 and x.x_dist == "normal"]
    assert sorted(x.n_inputs for x in plain) == [1, 2, 8] and {x.n_obs for x in d.values()} == {200}
    noisy = [x for x in d.values() if x.y_noise > 0]
    assert len(noisy) == 1 and noisy[0].n_inputs == 8
    degenerate = [x for x in d.values() if x.x_dist == "magnitude"]
    assert len(degenerate) == 1 and degenerate[0].x_spread == 0.0
    for name in designs:
        latent = runs[("latent_nuts_strong", name)].design
        assert latent.n_obs == 50 and latent.n_inputs == d[name].n_inputs and latent.y_noise == d[name].y_noise


def test_study_run_folders_are_readable_and_distinct(study_runs):
    _, _, _, runs = study_runs
    from omegaconf import OmegaConf

    names = {k: OmegaConf.to_container(cfg.hydra.sweep, resolve=True)["subdir"] for k, cfg in runs.items()}
    assert len(set(names.values())) == len(names)
    assert names[("latent_nuts_weak", "study_m1")] == "latent-nuts-weak-study_m1-N50-seed0"
    assert names[("marginal_quadrature_strong", "study_degenerate")] == "marginal-quadrature-strong-study_degenerate-N200-seed0"
    for (c, d), cfg in runs.items():
        assert {"study_cell", "design", "experiment"} <= set(cfg.hydra.job.config.override_dirname.exclude_keys)


def test_study_leaves_out_only_what_a_cell_names(study_runs):
    """Exact-NUTS jobs over the 2-core budget are left out with their reason (marginal NUTS at M = 1
    and under the weak prior; latent under the weak prior and on readout/degenerate) and so is the weak-prior
    exact quadrature at M = 8 (its node cap), the negative control beyond one design, and the
    budget's other cuts; nothing else."""
    _, _, designs, runs = study_runs
    out = {k for k, cfg in runs.items() if config.left_out(cfg) is not None}
    expected = ({("marginal_nuts_weak", d) for d in designs} | {("latent_nuts_weak", d) for d in designs}
                | {(c, d) for c in ("marginal_nuts_strong", "latent_nuts_strong") for d in designs if d != "study_m8"}
                | {(c, d) for c in ("marginal_quadrature_weak", "gaussian_quadrature_weak")
                   for d in ("study_m8", "study_m8_readout", "study_degenerate")}
                | {("marginal_quadrature_weak", "study_m2")}
                | {("gaussian_nuts_naive", d) for d in designs if d != "study_m8"}
                | {("gaussian_nuts_weak", "study_degenerate")})
    assert out == expected
    msg = config.left_out(runs[("marginal_nuts_weak", "study_m1")])
    assert "marginal-nuts-weak" in msg and "study_m1" in msg and "quadrature" in msg
    assert config.left_out(compose([])) is None
    with pytest.raises(ConfigError, match=r"^study\.leave_out_reason"):
        validate_config(compose(["study.leave_out_designs=[small]"]))


def test_left_out_run_writes_its_reason_and_fits_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "experiment=study", "study_cell=marginal_nuts_weak",
                           "design=study_m1", "hydra.mode=RUN", f"hydra.run.dir={run_dir}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "left out" in proc.stderr
    assert "per fit" in (run_dir / "left_out.txt").read_text()
    assert not (run_dir / "chunks").exists() and not (run_dir / "results.nc").exists()


def test_study_launcher_falls_back_to_basic(monkeypatch):
    """hydra/launcher=local: joblib when its plugin is installed, else Hydra's basic launcher."""
    import importlib.util

    try:  # without any Hydra plugin installed the parent package is missing and find_spec raises
        installed = importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is not None
    except ModuleNotFoundError:
        installed = False
    assert config.local_launcher()["defaults"][0] == ("joblib" if installed else "basic")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.hydra_joblib") else real(name, *a))
    assert config.local_launcher() == {"defaults": ["basic", "_self_"]}


def test_study_tiny_and_large_sizes():
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        tiny = hcompose("config", overrides=["experiment=study_tiny"], return_hydra_config=True)
        large = {c: hcompose("config", overrides=["experiment=study_large", f"study_cell={c}", "design=study_m8"])
                 for c in STUDY_CELLS}
    assert _sweep_values(tiny, "study_cell") == ["gaussian_nuts_strong", "gaussian_quadrature_strong"]
    assert _sweep_values(tiny, "design") == ["study_m2"]
    assert (tiny.design.n_obs, tiny.design.n_inputs, tiny.sbc.num_replicates) == (30, 2, 40)
    assert tiny.hydra.callbacks.study_summary.docs_dir == "multirun/study_tiny/report"  # the sweep folder, not docs/
    assert tiny.hydra.launcher._target_.endswith("BasicLauncher")
    for c, cfg in large.items():
        validate_config(cfg)
        assert (cfg.sbc.num_replicates, cfg.design.n_obs) == (1000, 200), c
