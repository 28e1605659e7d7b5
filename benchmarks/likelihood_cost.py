"""Cost of value+gradient (w.r.t. both noise levels, jitted) of the exact marginal log-likelihood
versus the Gaussian approximation, N = 200, M = 8, both measured in the same run.

Writes benchmarks/results/likelihood_cost.json and prints the ratio marginal/gaussian.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from noisydot_sbc.likelihoods import gaussian_logpdf, noisydot_logpdf_with_error  # noqa: E402
from noisydot_sbc.simulate import make_design, simulate_y  # noqa: E402


def median_time(fn, arg, repeats=2000, rounds=7):
    jax.block_until_ready(fn(arg))
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats // rounds):
            jax.block_until_ready(fn(arg))
        per_round.append((time.perf_counter() - t0) / (repeats // rounds))
    return float(np.median(per_round)), per_round


def main(n=200, m=8, sx=0.1, sw=0.05):
    d = make_design(jax.random.PRNGKey(0), n, m)
    y = simulate_y(jax.random.PRNGKey(1), d.x, d.w, sx, sw)
    exact = jax.jit(jax.value_and_grad(lambda p: jnp.sum(noisydot_logpdf_with_error(y, d.x, d.w, p[0], p[1]).logp)))
    gauss = jax.jit(jax.value_and_grad(lambda p: jnp.sum(gaussian_logpdf(y, d.x, d.w, p[0], p[1]))))
    p = jnp.array([sx, sw])
    res = noisydot_logpdf_with_error(y, d.x, d.w, sx, sw)
    t_exact, r_exact = median_time(exact, p)
    t_gauss, r_gauss = median_time(gauss, p)
    out = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "jax_version": jax.__version__, "backend": jax.default_backend(),
                    "load_average": os.getloadavg()},
        "setup": {"N": n, "M": m, "x_noise_lvl": sx, "w_noise_lvl": sw, "dtype": "float64",
                  "what": "jit(value_and_grad) w.r.t. (sigma_x, sigma_w) of the summed log-likelihood"},
        "exact_us": 1e6 * t_exact, "gaussian_us": 1e6 * t_gauss, "ratio": t_exact / t_gauss,
        "exact_rounds_us": [1e6 * t for t in r_exact], "gaussian_rounds_us": [1e6 * t for t in r_gauss],
        "n_fallback_observations": int(res.fallback.sum()), "max_error_estimate": float(res.err.max()),
    }
    path = Path(__file__).parent / "results" / "likelihood_cost.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"exact {out['exact_us']:.1f} us, gaussian {out['gaussian_us']:.1f} us, ratio marginal/gaussian = {out['ratio']:.1f}")
    return out


if __name__ == "__main__":
    main()
