"""Writes the result notebooks of experiments/ (run after editing the cell sources below).

    python experiments/make_notebooks.py

Each notebook reads its inputs from an environment variable, so the test suite can execute it
on small outputs that it makes itself (tests/test_notebooks.py).
"""
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent


def _nb(cells):
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c) for c in cells]
    return nb


THREE_MODELS = [
    """md:# Three models side by side: calibration, cost, degeneracy

Loads the SBC results of the three-model sweep (`python run.py -m experiment=three_models`) and shows,
for the **latent**, **marginal** and **gaussian** models under the **strong** and **weak** priors:
calibration (ECDF-difference plots with simultaneous 95% bands, uniformity p-values), cost (bulk ESS per
second of sampling) and degeneracy (posterior correlation of log σ_x and log σ_w, contraction of σ_w).

Set `NOISYDOT_SWEEP` to the sweep folder (default `multirun/sbc`).""",
    """%matplotlib inline
import os
from pathlib import Path

from noisydot_sbc import plots, results

SWEEP = Path(os.environ.get("NOISYDOT_SWEEP", "../multirun/sbc"))
paths = results.find_runs(SWEEP)
print(f"{len(paths)} SBC runs under {SWEEP}")
for p in paths:
    print(" ", p.relative_to(SWEEP))""",
    """md:## Summary table""",
    """summary = results.sweep_summary(paths)
table = summary.drop_vars("ecdf_p").to_dataframe()
table""",
    """summary["ecdf_p"].to_dataframe().unstack("quantity").round(4)""",
    """md:## Calibration, cost and degeneracy at a glance
Points below the dashed line (p < 0.05) mark a quantity whose ranks are not uniform: that model's
posterior is miscalibrated for it.""",
    """fig = plots.plot_sweep_summary(summary)
fig""",
    """md:## ECDF-difference plots, run by run
The grey band is the simultaneous 95% band of uniform ranks (Säilynoja et al. 2022): a curve that leaves
it anywhere is evidence of miscalibration. Orange: only fits without divergent transitions.""",
    """from IPython.display import display

for p in paths:
    ds = results.load_dataset(p)
    fig = plots.plot_ecdf(ds, difference=True, split_divergent=True)
    fig.suptitle(f"{ds.attrs['model']} model, {ds.attrs['prior']} prior: rank ECDF difference")
    display(fig)""",
    """md:## Degeneracy: z-score vs contraction
Where contraction of σ_w stays near 0 the data say little about σ_w and the prior decides; large |z|
with high contraction means a confidently wrong posterior (the signature of the Gaussian
approximation's light tails).""",
    """for p in paths:
    ds = results.load_dataset(p)
    fig = plots.plot_zscore_contraction(ds)
    fig.suptitle(f"{ds.attrs['model']} / {ds.attrs['prior']}")
    display(fig)""",
]

REAL_FIT = [
    """md:# Fitting a real device's measurements

Loads the output folder of `python run.py task=fit data.path=measurements.nc` (default: the shipped
sample, simulated with σ_x = 0.08 and σ_w = 0.06) and shows the posterior summary, the traces, the
identifiability diagnostics and the posterior predictive checks, tails included.

Set `NOISYDOT_FIT` to the fit's output folder.""",
    """%matplotlib inline
import json
import os
from pathlib import Path

import arviz as az
import pandas as pd

from noisydot_sbc import plots, results

FIT = Path(os.environ.get("NOISYDOT_FIT", "../outputs/fit"))
fit = json.loads((FIT / "fit.json").read_text())
print(f"model {fit['model']}, prior {fit['prior']}: N = {fit['n_obs']} observations, M = {fit['n_inputs']} inputs")
pd.read_csv(FIT / "summary.csv", index_col=0)""",
    """md:## Did the sampler converge?
R-hat and effective sample sizes against the project's thresholds (`diagnostics.THRESHOLDS`); a fit below
them says so here and in the run's log. Run longer before trusting such a fit.""",
    """conv = fit["convergence"]
print("converged by the thresholds" if conv["ok"] else "BELOW the thresholds:")
for w in conv["warnings"]:
    print("  -", w)
pd.Series(conv["thresholds"], name="threshold").to_frame()""",
    """md:## Traces and posterior""",
    """idata = az.from_netcdf(FIT / "posterior.nc")
axes = az.plot_trace(idata, var_names=["x_noise_lvl", "w_noise_lvl"])
axes[0, 0].figure""",
    """axes = az.plot_pair(idata, var_names=["x_noise_lvl", "w_noise_lvl"], kind="kde", marginals=True)
axes[0, 0].figure""",
    """md:## Can σ_x and σ_w be told apart from these data?
The expected Fisher information of (log σ_x, log σ_w) at the posterior median: a large condition number
and a Cramér–Rao correlation near −1 mean the data only pin down a combination of the two (a ridge);
the posterior correlation and the prior-dominated flags say the same from the fit itself.""",
    """deg = fit["degeneracy"]
fisher = fit["fisher"]
pd.DataFrame({
    "posterior corr(log σx, log σw)": [deg["corr_log"]],
    "FIM condition number": [fisher["condition_number"]],
    "Cramér–Rao sd log σx": [fisher["crb_sd_log"][0]],
    "Cramér–Rao sd log σw": [fisher["crb_sd_log"][1]],
    "prior-dominated σw": [deg["prior_dominated"]["w_noise_lvl"]],
    "multimodal": [deg["multimodal"]],
    "divergences": [fit["divergences"]],
})""",
    """md:## Posterior predictive checks
Replicated data come from the fitted model's own predictive distribution. The tail panel compares the
fraction of observations beyond k standard deviations: a Gaussian approximation shows too few replicated
exceedances at large k.""",
    """ppc = results.load_dataset(FIT / "ppc.nc")
plots.plot_ppc(ppc)""",
    """pd.DataFrame({"k (sd)": fit["ppc"]["tail_thresholds_sd"], "observed fraction": fit["ppc"]["observed_fraction"],
              "replicated fraction": fit["ppc"]["replicated_fraction_mean"], "P(rep >= obs)": fit["ppc"]["tail_ppp"]})""",
]


def main():
    nbf.write(_nb(THREE_MODELS), HERE / "three_models.ipynb")
    nbf.write(_nb(REAL_FIT), HERE / "real_data_fit.ipynb")


if __name__ == "__main__":
    main()
