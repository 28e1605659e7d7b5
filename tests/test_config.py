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
