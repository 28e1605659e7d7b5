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
    # batched as in the SBC engine: vmap over B replicates (the fallback's while_loop stays a loop)
    b = 16
    keys = jax.random.split(jax.random.PRNGKey(2), b)
    designs = [make_design(k, n, m) for k in keys]
    xb = jnp.stack([dd.x for dd in designs])
    wb = jnp.stack([dd.w for dd in designs])
    yb = jnp.stack([simulate_y(jax.random.fold_in(k, 1), dd.x, dd.w, sx, sw) for k, dd in zip(keys, designs)])

    def batched(fn):
        vg = jax.value_and_grad(lambda q, yy, xx, ww: jnp.sum(fn(yy, xx, ww, q[0], q[1])))
        return jax.jit(lambda q: jax.vmap(vg, in_axes=(None, 0, 0, 0))(q, yb, xb, wb))

    t_exact_b, _ = median_time(batched(lambda *a: noisydot_logpdf_with_error(*a).logp), p, repeats=140)
    t_gauss_b, _ = median_time(batched(gaussian_logpdf), p, repeats=700)
    out["batched"] = {"replicates": b, "exact_us_per_replicate": 1e6 * t_exact_b / b,
                      "gaussian_us_per_replicate": 1e6 * t_gauss_b / b, "ratio": t_exact_b / t_gauss_b}
    # float32
    y32, x32, w32 = (jnp.asarray(a, jnp.float32) for a in (y, d.x, d.w))
    exact32 = jax.jit(jax.value_and_grad(lambda q: jnp.sum(noisydot_logpdf_with_error(y32, x32, w32, q[0], q[1]).logp)))
    gauss32 = jax.jit(jax.value_and_grad(lambda q: jnp.sum(gaussian_logpdf(y32, x32, w32, q[0], q[1]))))
    p32 = jnp.asarray(p, jnp.float32)
    t_e32, _ = median_time(exact32, p32)
    t_g32, _ = median_time(gauss32, p32)
    out["float32"] = {"exact_us": 1e6 * t_e32, "gaussian_us": 1e6 * t_g32, "ratio": t_e32 / t_g32}
    value_only = jax.jit(lambda q: jnp.sum(noisydot_logpdf_with_error(y, d.x, d.w, q[0], q[1]).logp))
    out["exact_value_only_us"] = 1e6 * median_time(value_only, p)[0]
    out["heavy_m2"] = heavy_corner(w=(1.0, -0.8))
    out["heavy_m3"] = heavy_corner(w=(1.0, -0.8, 0.6))
    path = Path(__file__).parent / "results" / "likelihood_cost.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"exact {out['exact_us']:.1f} us, gaussian {out['gaussian_us']:.1f} us, ratio marginal/gaussian = {out['ratio']:.1f}")
    bt = out["batched"]
    print(f"batched x{bt['replicates']}: exact {bt['exact_us_per_replicate']:.1f} us/replicate, gaussian "
          f"{bt['gaussian_us_per_replicate']:.2f} us/replicate, ratio {bt['ratio']:.1f}")
    print(f"float32: ratio {out['float32']['ratio']:.1f}; exact value only {out['exact_value_only_us']:.1f} us")
    for key in ("heavy_m2", "heavy_m3"):
        hv = out[key]
        print(f"heavy corner M={hv['M']} (N={hv['N']}, sigma=({hv['x_noise_lvl']}, {hv['w_noise_lvl']}), |x|~{hv['x_scale']}): "
              f"exact {hv['exact_ms']:.1f} ms ({hv['n_fallback_observations']} obs on the robust tiers, max error "
              f"estimate {hv['max_error_estimate']:.1e}), gaussian {hv['gaussian_ms']:.3f} ms")
    return out


def heavy_corner(n=100, sx=0.5, sw=0.5, x_scale=0.3, w=(1.0, -0.8)):
    """The regime the robust tiers exist for: small M, σ = 0.5, ‖x‖ ≲ σ_x (the observations leave the
    fast pass; the bent-contour tier certifies them). Cost of the same jit(value_and_grad)."""
    rng = np.random.default_rng(0)
    w = np.asarray(w)
    m = len(w)
    x = x_scale * rng.normal(size=(n, m))
    wt = w * (1 + sw * rng.normal(size=(n, m)))
    y = np.sum((x + sx * rng.normal(size=(n, m))) * wt, axis=-1)
    exact = jax.jit(jax.value_and_grad(lambda q: jnp.sum(noisydot_logpdf_with_error(y, x, w, q[0], q[1]).logp)))
    gauss = jax.jit(jax.value_and_grad(lambda q: jnp.sum(gaussian_logpdf(y, x, w, q[0], q[1]))))
    p = jnp.array([sx, sw])
    res = noisydot_logpdf_with_error(y, x, w, sx, sw)
    t_e, r_e = median_time(exact, p, repeats=35)
    t_g, _ = median_time(gauss, p, repeats=700)
    return {"N": n, "M": m, "x_noise_lvl": sx, "w_noise_lvl": sw, "x_scale": x_scale,
            "exact_ms": 1e3 * t_e, "exact_rounds_ms": [1e3 * t for t in r_e], "gaussian_ms": 1e3 * t_g,
            "n_fallback_observations": int(res.fallback.sum()), "max_error_estimate": float(res.err.max())}


if __name__ == "__main__":
    main()
