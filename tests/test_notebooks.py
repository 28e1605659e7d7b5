"""Executes the result notebooks of experiments/ on small outputs made here, so they never rot (``-m slow``).

The runs are tiny (the shapes and sampler of test_tasks_sbc.py, so a session shares the compiled
sampler) and use the Gaussian model: this test is about the notebooks; the models are tested
elsewhere.

Both tests are marked slow and run with ``pytest -m slow``: each makes its runs and then executes
the notebook in a fresh Jupyter kernel (about 45 s and 40 s on an idle 2-core machine), and the
default ``pytest`` run has to stay under 8 minutes. The notebooks are committed without outputs
(experiments/make_notebooks.py writes them), so only ``-m slow`` shows that they still execute;
the tasks and plotting functions they call are tested by the default run (test_tasks_sbc.py,
test_tasks_fit.py, test_plots.py).
"""
import os
from pathlib import Path

import jax
import nbformat
import pytest
from hydra import compose, initialize_config_dir
from nbclient import NotebookClient

from noisydot_sbc import config, tasks  # noqa: F401  (config registers the schemas)

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["sbc.num_replicates=4", "sbc.chunk_size=4", "sbc.num_ranks=19", "sampler.num_warmup=100",
        "sampler.num_samples=50", "sampler.num_chains=2", "sampler.max_tree_depth=5", "design.n_obs=20",
        "design.n_inputs=3", "progress=false", "seed=3"]


def _run(out, overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+output_dir={out}", *overrides])
    return tasks.run(cfg)


def _execute(name, env):
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


@pytest.mark.slow
def test_three_models_notebook(tmp_path):
    sweep = tmp_path / "sweep"
    for prior in ("strong", "weak"):
        _run(sweep / f"gaussian-{prior}", ["model=gaussian", f"prior={prior}", *TINY])
    nb = _execute("three_models.ipynb", {"NOISYDOT_SWEEP": str(sweep)})
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 1 + 2 * 2  # summary figure + ECDF and z-score figures for the 2 runs
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "2 SBC runs" in text


@pytest.mark.slow
def test_real_data_fit_notebook(tmp_path):
    out = tmp_path / "fit"
    _run(out, ["task=fit", "model=gaussian", "sampler.num_warmup=200", "sampler.num_samples=30",
               "sampler.num_chains=2", "task.ppc_draws=50", "task.fisher_sims=8", "progress=false"])
    nb = _execute("real_data_fit.ipynb", {"NOISYDOT_FIT": str(out)})
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # trace, pair, PPC
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "BELOW the thresholds" in text  # 2 x 30 draws: a bulk ESS below 400, said so
