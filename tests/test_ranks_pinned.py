"""Pinned behaviour: a small SBC run gives exactly these ranks (same seed, same code path).

The expected values were recorded from the run before the pipeline was split into tasks/; a
refactor that changes the random streams, the replicate simulation, the thinning, the test
quantities or the rank tie-breaking changes them. A deliberate change of behaviour re-pins them
and says so in its commit.
"""
from pathlib import Path

import jax
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from noisydot_sbc import config, results, tasks  # noqa: F401  (config registers the schemas)

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["sbc.num_replicates=4", "sbc.chunk_size=4", "sbc.num_ranks=19", "sampler.num_warmup=100",
        "sampler.num_samples=50", "sampler.num_chains=2", "sampler.max_tree_depth=5", "design.n_obs=20",
        "design.n_inputs=3", "progress=false", "seed=3"]
QUANTITIES = ["x_noise_lvl", "w_noise_lvl", "log_lik", "w_over_x"]
# the truth depends on the seed only (the same replicates for every model)
TRUE = [[0.2946315125913735, 0.06609391709931126, 2.3908649230398193, 0.22432738615769648], [0.09445801017511406, 0.019511110529614666, 3.991358750625274, 0.20655855965463765], [0.04512723271890083, 0.034625667065306384, 13.715738852866554, 0.7672898376240112], [0.033594516588969676, 0.011920026115701601, 22.88484933757196, 0.3548205875840877]]
PINNED = {
    "gaussian": {
        "rank": [[18, 6, 6, 5], [18, 2, 14, 1], [9, 10, 14, 9], [0, 1, 8, 7]],
        "posterior_mean": [[0.2217890366472146, 0.08905152200889463, 2.5022412659246243, 0.5621188776705994], [0.07974386864469621, 0.03690772854681299, 3.379877251785743, 0.479512558473507], [0.04660079043039276, 0.03581270992851296, 12.879214552014886, 0.8053662713087704], [0.05173646759415571, 0.026072883513863186, 22.775278544625323, 0.5166656592128035]],
    },
    "marginal": {
        "rank": [[18, 8, 9, 5], [15, 3, 13, 3], [5, 9, 15, 13], [2, 1, 6, 2]],
        "posterior_mean": [[0.22662527980075134, 0.0853393574183311, 2.2531417042705186, 0.40563557934489747], [0.0877316822265633, 0.03706433564357687, 3.4580250632271947, 0.42778155109960625], [0.052201587347462816, 0.035875075915398125, 12.128774478508488, 0.7762959208165782], [0.04743780121633251, 0.028573094191908087, 22.66552596152647, 0.6733831042084157]],
    },
}


def _run(tmp_path, model):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"+output_dir={tmp_path}", f"data.path={ROOT / 'data' / 'sample_measurements.nc'}",
            f"model={model}", *TINY])
    tasks.run(cfg)
    return results.load_dataset(tmp_path / "results.nc")


def _check(ds, model):
    assert list(ds["quantity"].values) == QUANTITIES
    assert not ds["failed"].values.any()
    np.testing.assert_array_equal(ds["rank"].values, np.array(PINNED[model]["rank"]))
    np.testing.assert_allclose(ds["true"].values, np.array(TRUE), rtol=1e-12)
    np.testing.assert_allclose(ds["posterior_mean"].values, np.array(PINNED[model]["posterior_mean"]), rtol=1e-9)


def test_gaussian_ranks_pinned(tmp_path):
    _check(_run(tmp_path, "gaussian"), "gaussian")


@pytest.mark.slow
def test_marginal_ranks_pinned(tmp_path):
    _check(_run(tmp_path, "marginal"), "marginal")
