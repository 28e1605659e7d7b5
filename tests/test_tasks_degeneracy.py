"""task=degeneracy end to end: the identifiability map shows the ridge where |x| does not vary."""
from pathlib import Path

import jax
from hydra import compose, initialize_config_dir

from noisydot_sbc import config, results, tasks  # noqa: F401  (config registers the schemas)

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]


def test_degeneracy_map_shows_the_ridge(tmp_path):
    # the facet (N = 300, M = 8) and 8 Fisher simulations: the shapes of the exact-likelihood Fisher
    # estimator in tests/test_identifiability.py (test_exact_fim_close_to_gaussian_for_small_noise),
    # so that one session compiles it once (~20 s)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"+output_dir={tmp_path}", "task=degeneracy", "model=gaussian", "task.x_spread=[0.0,3.0]",
            "task.ratio=[0.5]", "task.facets=[{n_obs:300,n_inputs:8}]", "task.replicates_per_cell=2",
            "task.fisher_sims=8", "sampler.num_warmup=200", "sampler.num_samples=200", "progress=false"])
    summary = tasks.run(cfg)
    ds = results.load_dataset(tmp_path / "degeneracy.nc")
    cond = ds["log10_condition"].values[0, :, 0]
    contraction = ds["contraction_w"].values[0, :, 0]
    assert cond[0] > cond[1] + 0.5          # no spread in |x|: a near-singular information matrix
    assert contraction[1] > contraction[0]   # spread in |x| lets the data pin down σ_w
    assert ds.attrs["inference"] == "nuts"
    assert (tmp_path / "degeneracy_log10_condition.png").exists()
    assert summary["log10_condition"][0][0][0] == round(float(cond[0]), 2)
