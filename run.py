"""Entry point: hands the Hydra config to the pipeline. See README.md.

    python run.py model=marginal prior=strong
    python run.py -m model=latent,marginal,gaussian prior=strong,weak
    python run.py task=fit data.path=measurements.nc
"""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from noisydot_sbc.pipeline import run

    return run(cfg)


if __name__ == "__main__":
    main()
