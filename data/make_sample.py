"""Regenerate the shipped sample measurements (known noise levels, for task=fit demos and tests).

    python data/make_sample.py

A device with M = 8 weights, N = 300 uses; inputs with a wide spread of |x| so that the two noise
levels are identifiable; true σ_x = 0.08, σ_w = 0.06.
"""
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from noisydot_sbc.results import save_measurements  # noqa: E402
from noisydot_sbc.simulate import make_design, simulate_y  # noqa: E402

TRUE = {"x_noise_lvl": 0.08, "w_noise_lvl": 0.06}


def main(out_dir=Path(__file__).resolve().parent, n_obs=300, n_inputs=8, seed=2026):
    kd, ky = jax.random.split(jax.random.PRNGKey(seed))
    d = make_design(kd, n_obs, n_inputs, x_dist="magnitude", x_scale=1.0, x_spread=3.0)
    y = simulate_y(ky, d.x, d.w, TRUE["x_noise_lvl"], TRUE["w_noise_lvl"])
    attrs = {"description": "simulated sample device measurements", **{f"true_{k}": v for k, v in TRUE.items()}}
    save_measurements(Path(out_dir) / "sample_measurements.nc", d.x, d.w, y, attrs=attrs)
    save_measurements(Path(out_dir) / "sample_measurements.csv", d.x, d.w, y)


if __name__ == "__main__":
    main()
