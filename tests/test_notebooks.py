"""Executes the result notebooks of experiments/ on small outputs made here, so they never rot."""
import os
from pathlib import Path

import jax
import nbformat
import pytest
from hydra import compose, initialize_config_dir
from nbclient import NotebookClient

from noisydot_sbc import pipeline

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["sbc.num_replicates=4", "sbc.chunk_size=4", "sbc.num_ranks=19", "sampler.num_warmup=100",
        "sampler.num_samples=60", "sampler.num_chains=2", "sampler.max_tree_depth=5", "design.n_obs=20",
        "design.n_inputs=3", "progress=false"]
# M = 3, not 2: under the weak prior nearly every M = 2 observation is in the heavy corner, where
# the exact likelihood needs its costly robust tiers (docs/likelihood.md); this test is about the
# notebooks, and the heavy corners are tested in test_likelihoods.py.


def _run(out, overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+output_dir={out}",
                                                       f"data.path={ROOT / 'data' / 'sample_measurements.nc'}",
                                                       *overrides])
    return pipeline.run(cfg)


def _execute(name, tmp_path, env):
    nb = nbformat.read(ROOT / "experiments" / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "experiments")}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    return nb


def test_three_models_notebook(tmp_path):
    sweep = tmp_path / "sweep"
    for model in ("latent", "marginal", "gaussian"):
        for prior in ("strong", "weak"):
            _run(sweep / f"{model}-{prior}", [f"model={model}", f"prior={prior}", *TINY])
    nb = _execute("three_models.ipynb", tmp_path, {"NOISYDOT_SWEEP": str(sweep)})
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 1 + 2 * 6  # summary figure + ECDF and z-score figures for the 6 runs
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "6 SBC runs" in text


def test_real_data_fit_notebook(tmp_path):
    out = tmp_path / "fit"
    _run(out, ["task=fit", "model=marginal", "sampler.num_warmup=200", "sampler.num_samples=200",
               "task.ppc_draws=40"])
    nb = _execute("real_data_fit.ipynb", tmp_path, {"NOISYDOT_FIT": str(out)})
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # trace, pair, PPC
