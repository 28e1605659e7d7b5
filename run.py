"""Entry point: checks the Hydra config and hands it to the task. See README.md.

    python run.py model=marginal prior=strong
    python run.py -m model=latent,marginal,gaussian prior=strong,weak
    python run.py task=fit data.path=measurements.nc

A config that cannot run (``sbc.num_replicates=0``, ``sampler.thinning=0`` ...) stops before any
work with one line naming the key and exit status 2; Hydra itself refuses unknown keys and wrong
types while composing (exit status 1). Other bad inputs (a missing data file ...) print their
one-line message and exit 1; ``HYDRA_FULL_ERROR=1`` shows the traceback.
"""
import os
import sys
import warnings

# The console shows what the user needs: ArviZ's daily notice about its refactor is not about
# this run (library INFO logs such as JAX's backend probing are silenced in conf/config.yaml).
warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from noisydot_sbc import config  # noqa: E402  (registers the config schemas before Hydra composes)
from noisydot_sbc.results import RunLocked  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    try:
        config.validate_config(cfg)
    except config.ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    reason = config.left_out(cfg)
    if reason is not None:  # a study cell that leaves this design out (conf/study_cell/): say so, fit nothing
        from noisydot_sbc.rundir import output_dir

        out = output_dir(cfg)
        out.mkdir(parents=True, exist_ok=True)
        (out / "left_out.txt").write_text(reason + "\n")
        print(f"left out: {reason}", file=sys.stderr)
        return {"left_out": reason}
    run = __import__("noisydot_sbc.tasks", fromlist=["run"]).run
    try:
        return run(cfg)
    except (ValueError, RunLocked) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, config.ConfigError) else 1)


if __name__ == "__main__":
    main()
