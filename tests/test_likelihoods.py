"""Accuracy of the exact marginal likelihood against independent references.

The scipy references (adaptive 1-D and nested 2-D quadrature, ``ref_m1`` / ``ref_m2`` / ``ref_m3``)
cost most of this file's time, so their values are stored in ``tests/data/likelihood_references.json``
(key: the reference and its arguments to 12 significant digits) and looked up; an argument not in
the file is computed on the spot. ``test_stored_references_are_reproduced`` (slow) recomputes every
stored value and checks it to 1e-12; ``NOISYDOT_REFERENCES=write pytest tests/test_likelihoods.py``
computes the ones the tests ask for that the file lacks and adds each to the file as soon as it is
computed.

The rest is compiling the likelihood (one program per shape, dtype and static options: 4-9 s each
for M <= 16 in a fresh process, 16 s at M = 64; its gradient more), so most calls go through
:func:`padded`, which pads the observations up to 16 or 64 rows and slices the result back: calls at
the same M and dtype with different N share one compiled program. The likelihood is per
observation, so the sliced values are those of the unpadded call (checked on M = 1, 2, 3, 8 cases,
float64 and float32, fast path and every tier: identical, or, where the M >= 2 robust tiers then
take their rows 16 at a time, within one ulp: at most 4e-15 in log p).
"""
import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from noisydot_sbc import likelihoods as L
from noisydot_sbc.simulate import simulate_y


REF_FILE = Path(__file__).parent / "data" / "likelihood_references.json"
_WRITE = os.environ.get("NOISYDOT_REFERENCES") == "write"
_STORE = json.loads(REF_FILE.read_text()) if REF_FILE.exists() else {}
_REFS = {}


def _plain(a):
    a = np.asarray(a, dtype=float)
    return float(a) if a.ndim == 0 else [float(v) for v in a.ravel()]


def _key(name, args):
    def fmt(v):
        return "[" + ",".join(f"{u:.12g}" for u in v) + "]" if isinstance(v, list) else f"{v:.12g}"
    return name + "(" + ",".join(fmt(_plain(a)) for a in args) + ")"


def _save_store():
    """Rewrite the file (atomically: a killed run leaves the previous file or the new one)."""
    REF_FILE.parent.mkdir(exist_ok=True)
    tmp = REF_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(_STORE.items())), indent=0) + "\n")
    os.replace(tmp, REF_FILE)


def stored(fn):
    """The reference's value from the stored file when it holds these arguments, else computed."""
    _REFS[fn.__name__] = fn

    @functools.wraps(fn)
    def wrapper(*args):
        key = _key(fn.__name__, args)
        hit = _STORE.get(key)
        if hit is not None:
            return hit["value"]
        value = float(fn(*args))
        if _WRITE:  # saved at once: no value is lost when the run is interrupted
            _STORE[key] = {"fn": fn.__name__, "args": [_plain(a) for a in args], "value": value}
            _save_store()
        return value

    wrapper.compute = fn
    return wrapper


@stored
def ref_m1(y, x, w, sx, sw, sy=0.0):
    """p(y), M = 1: scipy adaptive quadrature over u of N(y; x w̃, σ_x² w̃² + σ_y²), split at u = -1/σ_w."""
    def f(u):
        wt = w * (1 + sw * u)
        sd = np.sqrt(sx**2 * wt**2 + sy**2)
        return stats.norm.pdf(u) * stats.norm.pdf(y, x * wt, sd) if sd > 0 else 0.0

    pts = {-1.0 / sw, 0.0}
    if x != 0:
        pts.add((y / (x * w) - 1) / sw)
    edges = [-40.0] + sorted(p for p in pts if -40 < p < 40) + [40.0]
    return sum(integrate.quad(f, a, b, epsabs=0, epsrel=1e-13, limit=2000)[0] for a, b in zip(edges[:-1], edges[1:]))


@stored
def ref_m2(y, x, w, sx, sw, sy=0.0):
    """p(y), M = 2: nested adaptive quadrature over (u1, u2)."""
    edges = sorted({-12.0, 12.0, max(-1.0 / sw, -12.0), 0.0})

    def inner(u1):
        wt1 = w[0] * (1 + sw * u1)

        def f(u2):
            wt2 = w[1] * (1 + sw * u2)
            sd = np.sqrt(sx**2 * (wt1**2 + wt2**2) + sy**2)
            return stats.norm.pdf(u2) * stats.norm.pdf(y, x[0] * wt1 + x[1] * wt2, sd)

        return stats.norm.pdf(u1) * sum(
            integrate.quad(f, a, b, epsabs=0, epsrel=1e-12, limit=400)[0] for a, b in zip(edges[:-1], edges[1:])
        )

    return sum(integrate.quad(inner, a, b, epsabs=0, epsrel=1e-11, limit=400)[0] for a, b in zip(edges[:-1], edges[1:]))


ROWS = (16, 64)   # the canonical row counts of :func:`padded`


def padded(fn, y, x, *args, **kwargs):
    """``fn(y, x, *args, **kwargs)`` (the exact likelihood, either form) with y (N,) and x (N, M)
    padded to the next of ``ROWS`` rows by copies of the first observation, every output sliced
    back to N rows. Traceable (the gradient tests differentiate through it)."""
    y, x = jnp.asarray(y), jnp.asarray(x)
    n = y.shape[0]
    size = next(r for r in ROWS if r >= n)
    pad = lambda a: jnp.concatenate([a, jnp.broadcast_to(a[:1], (size - n,) + a.shape[1:])])
    return jax.tree.map(lambda a: a[:n], fn(pad(y), pad(x), *args, **kwargs))


exact = functools.partial(padded, L.noisydot_logpdf_with_error)
exact_logp = functools.partial(padded, L.noisydot_logpdf)


# The single passes and the references built from them run compiled whole: run eagerly, each of
# their hundreds of operations was compiled on its own (about 1000 small compiles in this file).
polar_pass = jax.jit(L.polar_m2_pass, static_argnums=6)
fourier_pass = jax.jit(L.fourier_pass, static_argnums=(8, 9))
tilted_pass = jax.jit(L.tilted_pass, static_argnums=(9, 10), static_argnames=("kappa", "t0"))


@functools.partial(jax.jit, static_argnums=5)
def line_setup(ys, X, w, sx, sw, n_iter=60):
    """What an inversion pass starts from: δ = y - E[y], ŝ, K''(ŝ), K̃(ŝ) and the terms (c², μ, v)."""
    c2, mu, v = L.term_params(X, w, sx, sw)
    delta = ys - jnp.sum(mu, axis=-1)
    s_hat, k2 = L.saddlepoint_from_terms(delta, c2, mu, v, 0.0, n_iter, return_k2=True)
    k0, _, _ = L.cgf_derivs(s_hat, c2, mu, v, 0.0)
    return delta, s_hat, k2, k0, c2, mu, v


def _ys(x, w, sx, sw, zs):
    x = np.atleast_1d(x)
    w = np.atleast_1d(w)
    m = x @ w
    sd = np.sqrt(np.sum(w**2 * (x**2 * sw**2 + sx**2 * (1 + sw**2))))
    return m + sd * np.asarray(zs)


ZS = [-8, -5, -2, -0.7, 0.3, 1.5, 4, 8]


@pytest.mark.parametrize(
    "x,w,sx,sw",
    [(1.0, 0.7, 0.1, 0.05), (-0.4, 1.3, 0.03, 0.02), (0.3, 1.0, 0.5, 0.5), (1.0, 1.0, 0.5, 0.2),
     (2.0, -1.3, 0.05, 0.3), (0.05, 0.8, 0.2, 0.4)],
)
def test_m1_matches_quad(x, w, sx, sw):
    ys = _ys(x, w, sx, sw, ZS)
    got = exact_logp(jnp.asarray(ys), jnp.full((len(ys), 1), x), jnp.asarray([w]), sx, sw)
    ref = np.log([ref_m1(y, x, w, sx, sw) for y in ys])
    assert np.all(np.isfinite(np.asarray(got)))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize("x,w,sx,sw", [((1.0, -0.5), (0.7, 1.2), 0.1, 0.05), ((1.0, 0.5), (1.0, 1.0), 0.3, 0.2),
                                       ((0.8, -1.1), (0.5, 0.9), 0.5, 0.25)])
def test_m2_matches_dblquad(x, w, sx, sw):
    x, w = np.asarray(x), np.asarray(w)
    ys = _ys(x, w, sx, sw, [-8, -3, 0.3, 4, 8])
    res = exact(jnp.asarray(ys), jnp.tile(x, (len(ys), 1)), w, sx, sw)
    ref = np.log([ref_m2(y, x, w, sx, sw) for y in ys])
    np.testing.assert_allclose(np.asarray(res.logp), ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize(
    "x,w,sx,sw,sy",
    [((0.3, 0.2), (1.0, -0.8), 0.5, 0.5, 0.0), ((0.05, -0.4), (0.7, 1.2), 0.3, 0.5, 0.0),
     ((0.2, 0.1), (1.0, 0.5), 0.5, 0.4, 0.05)],
)
def test_m2_heavy_corner_matches_dblquad(x, w, sx, sw, sy):
    """σ_w ≥ 0.4, ‖x‖ ≲ σ_x: the characteristic function decays only like t^-2, so Fourier inversion
    cannot reach 1e-8 there; the robust tiers (bent contour, polar quadrature) must (y = 0 included)."""
    x, w = np.asarray(x), np.asarray(w)
    ys = np.concatenate([_ys(x, w, sx, sw, [-8, 0.3, 4]), [0.0]])
    res = exact(jnp.asarray(ys), jnp.tile(x, (len(ys), 1)), w, sx, sw, sy)
    ref = np.log([ref_m2(y, x, w, sx, sw, sy) for y in ys])
    assert np.asarray(res.fallback).sum() >= 2  # the corner really needs the robust tiers
    np.testing.assert_allclose(np.asarray(res.logp), ref, rtol=0, atol=1e-8)
    assert np.all(np.asarray(res.err) < 1e-7)


def test_polar_pass_converges_and_its_estimate_is_honest():
    """The M = 2 polar scheme alone, at a coarse and a fine resolution, against nested quad."""
    x, w, sx, sw = np.array([0.541, 0.215]), np.array([0.355, -0.654]), 0.35, 0.404
    ys = np.array([-0.8, 0.0, 0.6])
    ref = np.log([ref_m2(y, x, w, sx, sw) for y in ys])
    X = jnp.tile(x, (len(ys), 1))
    coarse = polar_pass(jnp.asarray(ys), X, jnp.asarray(w), sx, sw, 0.0, 32)
    fine = polar_pass(jnp.asarray(ys), X, jnp.asarray(w), sx, sw, 0.0, 128)
    for res in (coarse, fine):
        err = np.abs(np.asarray(res.logp) - ref)
        assert np.all(err <= np.maximum(np.asarray(res.err_disc), np.asarray(res.err_tail)) + 1e-12)
    assert np.max(np.abs(np.asarray(coarse.logp) - ref)) > 1e-7   # 32 nodes is visibly not converged
    np.testing.assert_allclose(np.asarray(fine.logp), ref, rtol=0, atol=1e-8)


@stored
def ref_m3(y, x, w, sx, sw):
    """p(y), M = 3: scipy quad over u_k of one term k, of the M = 2 density of the other two terms
    with term k's x noise (σ_x w̃_k) as readout noise; the inner density by the polar scheme (tested
    against nested quad above) at 384 nodes, which must agree with the 256-node rule to 1e-11 at
    every point quad asks for; the terms are tried as the outer one in turn until that holds."""
    for k in np.argsort(-np.abs(w)):
        rest = [i for i in range(3) if i != k]
        x2, w2 = jnp.asarray(x[None, rest]), jnp.asarray(w[rest])
        inner = jax.jit(lambda yy, y2: jnp.stack([L.polar_m2_pass(yy, x2, w2, sx, sw, y2, n).logp[0] for n in (256, 384)]))
        worst = [0.0]

        def f(u):
            wt = w[k] * (1 + sw * u)
            lo, hi = np.asarray(inner(jnp.asarray([y - x[k] * wt]), (sx * wt) ** 2))
            worst[0] = max(worst[0], abs(hi - lo))
            return stats.norm.pdf(u) * np.exp(hi)

        edges = sorted({-12.0, 12.0, max(-1.0 / sw, -12.0), 0.0})
        val = sum(integrate.quad(f, a, b, epsabs=0, epsrel=1e-12, limit=400)[0] for a, b in zip(edges[:-1], edges[1:]))
        if worst[0] < 1e-11:
            return val
    raise AssertionError("no ordering of the terms gives a converged inner density")


@pytest.mark.parametrize(
    "x,w,sx,sw,zs",
    [((-0.8, -1.32, -0.25), (0.42, 1.14, 0.11), 0.5, 0.5, [-8, 0.2, 3, 8]),   # was 5e-4 off before the bent contour
     ((0.0, 0.05, 0.1), (1.0, 1.0, 1.0), 0.5, 0.5, [-3, "zero"]),           # ‖x‖ ≪ σ_x, y = 0 exactly
     ((0.3, -1.2, 0.5), (0.03, 0.04, -1.99), 0.5, 0.3, [-5, 0.2, 8])],      # two weights near 0 (was 3e-5)
)
def test_m3_heavy_corner_matches_reference(x, w, sx, sw, zs):
    """M = 3, σ up to 0.5: the characteristic function decays only like t^-3 here, so this is the
    case the bent-contour tier exists for. < 1e-8 against the independent reference, and the
    returned error estimate covers the error (up to the reference's own ~1e-12)."""
    x, w = np.asarray(x), np.asarray(w)
    ys = np.array([0.0 if z == "zero" else _ys(x, w, sx, sw, [z])[0] for z in zs])
    res = exact(jnp.asarray(ys), jnp.tile(x, (len(ys), 1)), w, sx, sw)
    ref = np.log([ref_m3(y, x, w, sx, sw) for y in ys])
    err = np.abs(np.asarray(res.logp) - ref)
    assert np.all(err < 1e-8), err
    assert np.all(err <= np.asarray(res.err) + 1e-11)


def ref_vertical_line(ys, x, w, sx, sw, h=0.25, t_max=2e4):
    """p(y) by the plain vertical-line Fourier inversion (per-term complex logs, no bend, no map)
    with a range long enough for the t^-M tail (M ≥ 4), at t_max/4 and t_max: both are returned so
    that a test can check the reference itself has converged."""
    X = jnp.tile(jnp.asarray(x), (len(ys), 1))
    delta, s_hat, k2, k0, c2, mu, v = line_setup(jnp.asarray(ys), X, jnp.asarray(w), sx, sw)
    return [np.asarray(fourier_pass(delta, s_hat, k0, k2, c2, mu, v, 0.0, h, int(t / h) + 1).logp)
            for t in (t_max / 4, t_max)]


def test_m4_heavy_corner_matches_long_vertical_line():
    x, w, sx, sw = np.array([0.2, -0.1, 0.3, 0.05]), np.array([0.9, -1.2, 0.5, 1.4]), 0.5, 0.5
    ys = np.concatenate([_ys(x, w, sx, sw, [-8, -3, 0.2, 3, 8]), [0.0]])
    short, ref = ref_vertical_line(ys, x, w, sx, sw)
    assert np.max(np.abs(short - ref)) < 1e-11                       # the reference has converged
    res = L.noisydot_logpdf_with_error(jnp.asarray(ys), jnp.tile(x, (len(ys), 1)), w, sx, sw)
    np.testing.assert_allclose(np.asarray(res.logp), ref, rtol=0, atol=1e-10)
    assert np.all(np.asarray(res.fallback))                          # the fast path cannot certify these


def test_tilted_pass_is_contour_independent_and_its_estimate_is_honest():
    """The bent-contour pass alone: the value must not depend on the contour (bend κ, start T₀) once
    converged, a coarse step must be visibly off and say so, and the fine rule must match the
    independent M = 3 reference."""
    x, w, sx, sw = np.array([0.209, -0.355, -0.199]), np.array([-1.17, 0.035, -0.496]), 0.5, 0.3
    ys = np.concatenate([_ys(x, w, sx, sw, [-8, -2, 0.4, 8]), [0.0, 1e-4]])
    X = jnp.tile(jnp.asarray(x), (len(ys), 1))
    delta, s_hat, k2, k0, c2, mu, v = line_setup(jnp.asarray(ys), X, jnp.asarray(w), sx, sw)

    def run(h, **kw):
        return tilted_pass(jnp.asarray(ys), delta, s_hat, k0, jnp.sqrt(k2), c2, mu, v, 0.0, h, 28.0, **kw)

    fine = [run(0.05, kappa=k, t0=t0) for k, t0 in [(0.75, 3.0), (0.4, 1.0), (1.0, 6.0)]]
    for other in fine[1:]:
        np.testing.assert_allclose(np.asarray(other.logp), np.asarray(fine[0].logp), rtol=0, atol=1e-12)
    coarse = run(0.2)
    err_coarse = np.abs(np.asarray(coarse.logp) - np.asarray(fine[0].logp))
    assert err_coarse.max() > 1e-9
    assert np.all(err_coarse <= np.asarray(coarse.err_disc) + 1e-13)
    ref = np.log([ref_m3(y, x, w, sx, sw) for y in ys[[0, 4]]])
    np.testing.assert_allclose(np.asarray(fine[0].logp)[[0, 4]], ref, rtol=0, atol=1e-11)


def test_grouped_logarithm_with_a_failed_branch_check_is_never_accepted():
    """M = 16 far in the tail: Σ_group c_i|ŝ| > 1.9, so the fast path's grouped logarithm may take
    the wrong branch at some nodes (a sign flip of their terms) while both step sizes agree. Its
    result must not be kept with a small error estimate (this gave 4e-9 with an estimate of 2e-16)."""
    rng = np.random.default_rng(11)
    x, w = 0.4 * rng.normal(size=16), rng.normal(size=16)
    sx, sw = 0.1, 0.5
    ys = _ys(x, w, sx, sw, [-8, -6, 6, 8])
    short, ref = ref_vertical_line(ys, x, w, sx, sw, h=0.2, t_max=400.0)
    assert np.max(np.abs(short - ref)) < 1e-12
    _, s_hat, _, _, c2, _, _ = line_setup(jnp.asarray(ys), jnp.tile(jnp.asarray(x), (len(ys), 1)), jnp.asarray(w), sx, sw, 6)
    groups = np.sqrt(np.asarray(c2)).reshape(2, 8).sum(-1)
    assert np.any(groups.max() * np.abs(np.asarray(s_hat)) > 1.9)    # the case this test is about
    res = L.noisydot_logpdf_with_error(jnp.asarray(ys), jnp.tile(x, (len(ys), 1)), w, sx, sw)
    np.testing.assert_allclose(np.asarray(res.logp), ref, rtol=0, atol=1e-11)


@pytest.mark.parametrize("m,sx,sw", [(8, 0.1, 0.05), (8, 0.5, 0.5), (64, 0.3, 0.3)])
def test_large_m_matches_rao_blackwell_mc(m, sx, sw):
    """Rao-Blackwellised MC over u: p(y) = E_u N(y; x·w̃, σ_x²‖w̃‖²); tolerance 5 standard errors."""
    rng = np.random.default_rng(m)
    x = rng.normal(size=(1, m))
    w = rng.normal(size=m)
    ys = _ys(x[0], w, sx, sw, [-6, -2, 0.5, 3, 6])
    # (M = 64 is the only call at its M, and compiles slower at 16 rows: not padded)
    got = np.asarray((exact_logp if m < 64 else L.noisydot_logpdf)(jnp.asarray(ys), jnp.tile(x, (len(ys), 1)), w, sx, sw))
    u = rng.normal(size=(400_000, m))
    wt = w * (1 + sw * u)
    mean, sd = wt @ x[0], sx * np.linalg.norm(wt, axis=1)
    for y, g in zip(ys, got):
        dens = stats.norm.pdf(y, mean, sd)
        p, se = dens.mean(), dens.std() / np.sqrt(len(dens))
        assert abs(g - np.log(p)) < 5 * se / p + 1e-10, (y, g, np.log(p), se / p)


def test_against_gaussian_bulk_and_tails():
    """Bulk ≈ Gaussian approximation; M=1 tails much heavier (MATH.md: ≈2.7 nats at 6 sd)."""
    x, w, sx, sw = 1.0, 1.0, 0.1, 0.05
    ys = _ys(x, w, sx, sw, [0.0, 6.0])
    args = (jnp.asarray(ys), jnp.full((2, 1), x), jnp.asarray([w]), sx, sw)
    ex, gauss = exact_logp(*args), L.gaussian_logpdf(*args)
    assert abs(float(ex[0] - gauss[0])) < 0.05
    assert 1.5 < float(ex[1] - gauss[1]) < 4.0


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(30, 8)), rng.normal(size=8)
    sx, sw = 0.12, 0.07
    y = x @ w + rng.normal(size=30) * 0.3

    def f(p):
        return jnp.sum(exact(y, x, w, p[0], p[1]).logp)

    p = jnp.array([sx, sw])
    g = jax.jit(jax.grad(f))(p)
    e = 1e-6
    fd = np.array([(f(p + e * d) - f(p - e * d)) / (2 * e) for d in np.eye(2)])
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-6)


def test_y_noise_matches_quad_and_gradient():
    x, w, sx, sw, sy = 0.7, 1.1, 0.2, 0.3, 0.15
    ys = np.array([-0.5, 0.0, 0.4, 1.5])
    got = exact_logp(jnp.asarray(ys), jnp.full((4, 1), x), jnp.asarray([w]), sx, sw, sy)
    ref = np.log([ref_m1(y, x, w, sx, sw, sy) for y in ys])
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-8, rtol=0)


@pytest.mark.parametrize("sw,x", [(1.0, 0.1), (2.0, 0.5), (3.0, 0.0), (3.0, 1.0)])
def test_heavy_corner_m1(sw, x):
    """σ_w up to 3, M = 1: direct quadrature over log|w̃|; accuracy 1e-8 verified (y ≠ 0)."""
    w, sx = 1.0, 0.3
    ys = np.array([-3.0, -0.2, 0.01, 0.5, 2.0, 6.0])
    res = exact(jnp.asarray(ys), jnp.full((len(ys), 1), x), jnp.asarray([w]), sx, sw)
    lp = np.asarray(res.logp)
    assert np.all(np.isfinite(lp))
    ref = np.log([ref_m1(y, x, w, sx, sw) for y in ys])
    np.testing.assert_allclose(lp, ref, atol=1e-8, rtol=0)


def test_float32_works():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 8))
    w = rng.normal(size=8)
    y = x @ w + 0.2 * rng.normal(size=50)
    lp64 = exact_logp(y, x, w, 0.1, 0.05)
    lp32 = exact_logp(y.astype(np.float32), x.astype(np.float32), w.astype(np.float32),
                      np.float32(0.1), np.float32(0.05))
    assert lp32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(lp32), np.asarray(lp64), atol=2e-4, rtol=0)
    g = jax.grad(lambda s: jnp.sum(L.noisydot_logpdf_with_error(
        y.astype(np.float32), x.astype(np.float32), w.astype(np.float32), s, np.float32(0.05)).logp))(np.float32(0.1))
    assert np.isfinite(float(g))


def test_cgf_and_saddlepoint():
    rng = np.random.default_rng(4)
    x, w = rng.normal(size=(5, 3)), rng.normal(size=3)
    sx, sw = 0.2, 0.1
    mean, var = L.moments(x, w, sx, sw)
    k = lambda s: L.cgf(s, x, w, sx, sw)
    d1 = jax.grad(lambda s: jnp.sum(k(s)))(jnp.zeros(5))
    d2 = jax.grad(lambda s: jnp.sum(jax.grad(lambda t: jnp.sum(k(t)))(s)))(jnp.zeros(5))
    np.testing.assert_allclose(d1, mean, rtol=1e-12)
    np.testing.assert_allclose(d2, var, rtol=1e-12)
    y = np.asarray(mean) + 3 * np.sqrt(np.asarray(var))
    s = L.saddlepoint(y, x, w, sx, sw)
    d1s = jax.vmap(jax.grad(lambda t, i: k(jnp.full(5, t))[i]), (0, 0))(s, jnp.arange(5))
    np.testing.assert_allclose(d1s, y, rtol=1e-10)
    sp = L.saddlepoint_logpdf(y, x, w, sx, sw)
    ex = exact_logp(y, x, w, sx, sw)
    assert np.all(np.abs(np.asarray(sp - ex)) < 0.1)
    assert np.all(np.abs(np.asarray(sp - ex)) > 1e-6)



def test_fast_sincos_and_half_angle_match_numpy():
    """The fast pass's hand-written float64 phase arithmetic against NumPy's libm: sin and cos
    within 3e-16 up to PHASE_MAX (reduction by π/2 in three parts, so no loss at large phases),
    and the half-angle unit vector of z within 3e-16 of (cos, sin)(arg z / 2) in every quadrant,
    including the negative real axis from above and small imaginary parts on either side."""
    from noisydot_sbc.likelihoods.inversion import PHASE_MAX, half_angle, sincos

    rng = np.random.default_rng(11)
    x = np.concatenate([rng.uniform(-4, 4, 20000), rng.uniform(-PHASE_MAX, PHASE_MAX, 20000),
                        np.arange(-40, 41) * (np.pi / 4), [0.0, PHASE_MAX, -PHASE_MAX]])
    s, c = (np.asarray(a) for a in jax.jit(sincos)(jnp.asarray(x)))
    assert np.max(np.abs(s - np.sin(x))) < 3e-16
    assert np.max(np.abs(c - np.cos(x))) < 3e-16
    s32, c32 = sincos(jnp.asarray(x[:100], jnp.float32))   # float32 keeps jnp.sin / jnp.cos
    assert s32.dtype == jnp.float32 and np.allclose(c32, np.cos(x[:100]), atol=1e-3)
    theta = np.concatenate([rng.uniform(-np.pi, np.pi, 20000), [np.pi, 0.0, 1e-12, -1e-12, np.pi - 1e-9, 1e-9 - np.pi]])
    mod = np.exp(rng.uniform(-20, 20, theta.size))
    re, im = mod * np.cos(theta), mod * np.sin(theta)
    im[theta == np.pi] = 0.0
    hc, hs = (np.asarray(a) for a in jax.jit(half_angle)(jnp.asarray(re), jnp.asarray(im), jnp.asarray(re * re + im * im)))
    assert np.max(np.abs(hc - np.cos(theta / 2))) < 3e-16
    assert np.max(np.abs(hs - np.sin(theta / 2))) < 3e-16

@pytest.mark.parametrize(
    "kwargs,name",
    [(dict(x=np.ones((3, 2)), w=np.ones(3)), "x"), (dict(x=np.array([[np.nan, 1.0]])), "x"),
     (dict(w=np.array([np.inf, 1.0])), "w"), (dict(y=np.array([np.nan])), "y"), (dict(x_noise_lvl=0.0), "x_noise_lvl"),
     (dict(w_noise_lvl=-1.0), "w_noise_lvl"), (dict(w=np.zeros(2)), "w"), (dict(x=np.ones((0, 2)), y=np.ones(0)), "x"),
     (dict(y=np.ones(3)), "y"), (dict(y_noise=-0.1), "y_noise")],
)
def test_bad_input_raises(kwargs, name):
    args = dict(y=np.array([0.5]), x=np.array([[1.0, 2.0]]), w=np.array([0.5, -0.3]), x_noise_lvl=0.1, w_noise_lvl=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        L.noisydot_logpdf(**args)


def _mixed_batch():
    """Two replicates: one that the fast pass covers, one (M = 1, σ_w = 2) that needs the robust scheme."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 12, 1))
    w = np.array([[0.9], [1.3]])
    y = np.stack([x[0, :, 0] * 0.9 + 0.1 * rng.normal(size=12), x[1, :, 0] * 1.3 + 0.8 * rng.normal(size=12)])
    theta = np.array([[0.1, 0.05], [0.3, 2.0]])
    return y, x, w, theta


def test_vmap_over_replicates_matches_per_replicate_and_keeps_fallback():
    y, x, w, theta = _mixed_batch()

    def lp(t, yy, xx, ww):
        return jnp.sum(L.noisydot_logpdf_with_error(yy, xx, ww, t[0], t[1]).logp)

    vg = jax.jit(jax.vmap(jax.value_and_grad(lp)))(jnp.asarray(theta), y, x, w)
    fb = [bool(exact(y[i], x[i], w[i], *theta[i]).fallback.any()) for i in range(2)]
    assert fb == [False, True]  # the batch really mixes the two paths
    for i in range(2):
        v1, g1 = jax.value_and_grad(lp)(jnp.asarray(theta[i]), y[i], x[i], w[i])
        np.testing.assert_allclose(float(vg[0][i]), float(v1), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(vg[1][i]), np.asarray(g1), rtol=1e-10)
        ref = np.sum(np.log([ref_m1(yy, xx, w[i, 0], *theta[i]) for yy, xx in zip(y[i], x[i, :, 0])]))
        np.testing.assert_allclose(float(vg[0][i]), ref, atol=1e-7)


def test_analytic_gradient_with_readout_noise_matches_finite_differences():
    rng = np.random.default_rng(8)
    x, w = rng.normal(size=(40, 6)), rng.normal(size=6)
    y = x @ w + 0.3 * rng.normal(size=40)

    def f(p):
        return jnp.sum(L.noisydot_logpdf_with_error(y, x, w, p[0], p[1], p[2]).logp)

    p = jnp.array([0.15, 0.08, 0.1])
    assert not bool(L.noisydot_logpdf_with_error(y, x, w, *p).fallback.any())  # the analytic fast-pass path
    g = jax.grad(f)(p)
    fd = np.array([(f(p + 1e-6 * d) - f(p - 1e-6 * d)) / 2e-6 for d in np.eye(3)])
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-6)


def test_derivative_wrt_data_is_refused():
    x, w, y = np.ones((3, 2)), np.ones(2), np.array([0.5, 1.0, 2.0])
    with pytest.raises(NotImplementedError, match="noise levels only"):
        jax.grad(lambda yy: jnp.sum(L.noisydot_logpdf_with_error(yy, x, w, 0.1, 0.1).logp))(y)


@pytest.mark.parametrize("w", [(1.0, -0.8), (1.0, -0.8, 0.6)])
def test_gradient_through_robust_tiers_matches_finite_differences(w):
    """Heavy corner, M = 2 and 3: most observations are certified only by the bent-contour tier
    (the derivative is forward-mode autodiff of that quadrature at fixed nodes)."""
    rng = np.random.default_rng(11)
    w = np.asarray(w)
    x = 0.3 * rng.normal(size=(12, len(w)))
    y = x @ w + 0.6 * rng.normal(size=12)
    p = jnp.array([0.5, 0.45, 0.02])
    assert int(exact(y, x, w, *p).fallback.sum()) >= 6

    def f(q):
        return jnp.sum(exact(y, x, w, q[0], q[1], q[2]).logp)

    g = jax.grad(f)(p)
    fd = np.array([(f(p + 1e-6 * d) - f(p - 1e-6 * d)) / 2e-6 for d in np.eye(3)])
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-6)


def test_float32_heavy_corner_m3():
    """Float32 in the M = 3 heavy corner (robust tiers in single precision): within 2e-5 of float64."""
    x, w, sx, sw = np.array([0.3, 0.2, -0.1]), np.array([1.0, -0.8, 0.6]), 0.5, 0.5
    ys = np.concatenate([_ys(x, w, sx, sw, [-8, -3, 0.2, 3, 8]), [0.0]])
    X = np.tile(x, (len(ys), 1))
    r64 = exact(ys, X, w, sx, sw)
    r32 = exact(ys.astype(np.float32), X.astype(np.float32), w.astype(np.float32), np.float32(sx), np.float32(sw))
    assert r32.logp.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(r32.logp, np.float64), np.asarray(r64.logp), rtol=0, atol=2e-5)
    assert np.all(np.asarray(r32.err) < 1e-5)


# ---- float32: finite, accurate value and gradient where float64 has them (issue: NaN gradients) -----

F32_POINTS = {
    2: [(0.1, 0.5), (0.3, 2.0), (0.5, 3.0)],
    3: [(0.3, 1.0), (0.5, 2.0), (0.1, 3.0), (3.0, 3.0), (1.0, 1.0)],   # σ_w ≥ 1 and σ_x = σ_w ≥ 3 (were NaN)
    4: [(0.5, 1.0), (1.0, 2.0), (2.0, 1.0)],
}


@pytest.mark.parametrize("m", [pytest.param(2, marks=pytest.mark.slow), 3, pytest.param(4, marks=pytest.mark.slow)])
def test_float32_value_and_gradient_match_float64(m):
    """Heavy noise, M = 2..4: the bent-contour tier's derivative overflowed float32 (D² ~ 1e46 in the
    autodiff of g/D) and gave NaN gradients with a finite value. Now every point is finite and agrees
    with float64 (value within 1e-4 nats per observation, gradient within 1e-3 relative)."""
    rng = np.random.default_rng(m)
    n = 8
    x, w = rng.normal(size=(n, m)), rng.normal(size=m)
    pts = np.array(F32_POINTS[m])
    ys = np.stack([np.asarray(simulate_y(jax.random.PRNGKey(i), x, w, *p)) for i, p in enumerate(pts)])

    def vg(dtype):
        f = jax.value_and_grad(lambda p, y: jnp.sum(L.noisydot_logpdf_with_error(
            y, x.astype(dtype), w.astype(dtype), p[0], p[1]).logp))
        v, g = jax.jit(jax.vmap(f))(jnp.asarray(pts, dtype), jnp.asarray(ys, dtype))
        return np.asarray(v, np.float64), np.asarray(g, np.float64)

    v32, g32 = vg(jnp.float32)
    v64, g64 = vg(jnp.float64)
    assert np.all(np.isfinite(v64)) and np.all(np.isfinite(g64))
    assert np.all(np.isfinite(v32)) and np.all(np.isfinite(g32)), g32
    np.testing.assert_allclose(v32, v64, rtol=0, atol=1e-4 * n)
    np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-3)


def test_float32_m1_small_and_zero_y():
    """M = 1 near y = 0: float32 matches float64 down to |y| = 1e-20 (the weight-noise pass works in
    units of e^z, the conditional variance no longer underflows), and y = 0 exactly, where the true
    density is infinite (log singularity, no readout noise), is flagged with an infinite error estimate
    in both precisions, with finite value and gradient."""
    x = np.array([[0.3], [0.3], [0.3], [1.0], [0.0]])
    w = np.array([1.0])
    y = np.array([1e-20, 1e-10, 0.0, 0.0, 0.5])
    out = {}
    for dt in (np.float32, np.float64):
        f = lambda p: exact(y.astype(dt), x.astype(dt), w.astype(dt), p[0], p[1])
        p = jnp.asarray([0.3, 2.0], dt)
        res = f(p)
        jac = jax.jacfwd(lambda q: f(q).logp)(p)
        assert np.all(np.isfinite(np.asarray(res.logp))) and np.all(np.isfinite(np.asarray(jac)))
        assert np.all(np.isinf(np.asarray(res.err)[[2, 3]]))
        assert np.all(np.asarray(res.err)[[0, 1, 4]] < (1e-6 if dt == np.float32 else 1e-12))
        out[dt] = (np.asarray(res.logp, np.float64), np.asarray(jac, np.float64))
    keep = [0, 1, 4]
    np.testing.assert_allclose(out[np.float32][0][keep], out[np.float64][0][keep], rtol=0, atol=2e-6)
    np.testing.assert_allclose(out[np.float32][1][keep], out[np.float64][1][keep], rtol=1e-4, atol=1e-5)


# ---- tiny noise levels: right, or flagged (issue: impossible densities) -------------------------

def test_tiny_noise_levels_right_down_to_1e_14():
    """Dyadic design (x·w exact in floating point) and y = E[y] + δ with δ on the float grid, so the
    reference is exact: at these noise levels the density is Gaussian to relative O(σ)
    (log N(δ; 0, Var)). Before the centred CGF, s·E[y] ~ 1e24 was formed and subtracted again
    (log p = 7.8e6 at 1e-20)."""
    x = np.array([[0.5, 1.0, -0.25]] * 3)
    w = np.array([1.0, 0.5, 2.0])
    mean = float(x[0] @ w)
    for s in (1e-10, 1e-12, 1e-14, 1e-20):
        _, var = L.moments(x, w, s, s)
        sd = float(np.sqrt(var[0]))
        d = np.round(np.array([0.0, 2.0, -3.0]) * sd / 2**-52) * 2**-52
        res = exact(mean + d, x, w, s, s)
        ref = -0.5 * np.log(2 * np.pi * np.asarray(var)) - 0.5 * d**2 / np.asarray(var)
        if s >= 1e-14:
            np.testing.assert_allclose(np.asarray(res.logp), ref, rtol=0, atol=1e-8)
        err = np.abs(np.asarray(res.logp) - ref)
        assert np.all(err <= np.asarray(res.err) + 1e-8), (s, err, res.err)


@pytest.mark.parametrize("s", [1e-20, 1e-30])
def test_tiny_noise_levels_never_silently_wrong(s):
    """The issue's case: random x, w, y = Σ x·w (so y - E[y] is only rounding, ~1e-16, which is
    thousands of standard deviations at σ = 1e-20). Every value is right (at most the Gaussian peak,
    within its estimate) or flagged with an estimate large enough to cover it; nothing is NaN."""
    rng = np.random.default_rng(0)
    for m in (1, 8):
        x, w = rng.normal(size=(3, m)), rng.normal(size=m)
        y = np.sum(x * w, axis=-1)
        res = exact(y, x, w, s, s)
        _, var = L.moments(x, w, s, s)
        peak = -0.5 * np.log(2 * np.pi * np.asarray(var))
        lp, err = np.asarray(res.logp), np.asarray(res.err)
        assert not np.any(np.isnan(lp))
        assert np.all(lp <= peak + err + 1e-8)          # never above the peak of a Gaussian of that width
        # right (within 1e-6 of the peak: δ is 0 or far below sd) or flagged by an estimate that covers it
        assert np.all((np.abs(lp - peak) < 1e-6) | (err >= np.abs(lp - peak)) | (err > 1.0))


# ---- loglik_grid: two-phase evaluation of many parameter points per replicate --------------------

@pytest.mark.parametrize("m", [1, 2, 8])
def test_loglik_grid_matches_per_point_evaluation(m):
    """Replicates × parameter points incl. tail points (σ_w up to 1, where most observations need the
    robust tiers): the two-phase grid evaluation equals per-point noisydot_logpdf_with_error (value,
    summed error estimate, and for M = 2 the gradient) to float64 accuracy."""
    rng = np.random.default_rng(10 + m)
    s, n = 2, 12
    x, w = rng.normal(size=(s, n, m)), rng.normal(size=(s, m))
    sx = np.array([[0.1, 0.3, 0.5, 1.0], [0.05, 0.2, 0.4, 0.8]])
    sw = np.array([[0.05, 0.3, 0.6, 1.0], [0.4, 0.1, 1.0, 0.7]])
    y = np.einsum("snm,sm->sn", x, w) + 0.5 * rng.normal(size=(s, n))
    g = L.loglik_grid(y, x, w, sx, sw, with_grad=(m == 2), bucket=16)
    assert g.loglik.shape == g.err.shape == g.n_robust.shape == sx.shape
    assert g.n_robust.sum() > 20 and g.n_robust.min() == 0        # the grid really mixes both phases
    # one compiled gradient for both replicates (their data are arguments, not constants)
    grad = jax.jit(jax.grad(lambda p, yy, xx, ww: jnp.sum(L.noisydot_logpdf_with_error(yy, xx, ww, p[0], p[1]).logp)))
    for i in range(s):
        per_point = [exact(y[i], x[i], w[i], a, b) for a, b in zip(sx[i], sw[i])]
        np.testing.assert_allclose(g.loglik[i], [float(np.sum(r.logp)) for r in per_point], rtol=1e-13, atol=1e-11)
        np.testing.assert_allclose(g.err[i], [float(np.sum(r.err)) for r in per_point], rtol=1e-6)
        assert np.all(g.n_robust[i] >= [int(np.sum(r.fallback)) for r in per_point])
        if m == 2:
            ref = np.stack([np.asarray(grad(jnp.array([a, b]), y[i], x[i], w[i])) for a, b in zip(sx[i], sw[i])])
            np.testing.assert_allclose(g.grad[i], ref, rtol=1e-11, atol=1e-10)


def _accept_case():
    """Two replicates, N = 40, M = 8, four points each from light to heavy noise (σ_w up to 1): many
    observations need the robust tiers, some of them the later ones."""
    rng = np.random.default_rng(12)
    s, n, m = 2, 40, 8
    x, w = rng.normal(size=(s, n, m)), rng.normal(size=(s, m))
    sx = np.array([[0.1, 0.3, 0.5, 1.0], [0.05, 0.2, 0.4, 0.8]])
    sw = np.array([[0.05, 0.3, 0.6, 1.0], [0.4, 0.1, 1.0, 0.7]])
    y = np.einsum("snm,sm->sn", x, w) + 0.5 * rng.normal(size=(s, n))
    return y, x, w, sx, sw


def test_loglik_grid_accept_keeps_fast_pass_values_within_their_error_estimate():
    """``accept`` (nats per observation) takes a fast-pass value whose error estimate is below it
    instead of sending it through the robust tiers: fewer observations go there, the summed error
    estimate stays at most N·accept above the default one, and each value is within its own
    (summed) estimate of the full-accuracy value. accept=None is the default; a bad accept is refused."""
    y, x, w, sx, sw = _accept_case()
    n = y.shape[1]
    full = L.loglik_grid(y, x, w, sx, sw, bucket=16)
    loose = L.loglik_grid(y, x, w, sx, sw, bucket=16, accept=1e-6)
    assert full.n_robust.sum() > 20
    assert loose.n_robust.sum() < full.n_robust.sum()
    assert np.all(loose.err <= full.err + n * 1e-6)
    assert np.all(np.abs(loose.loglik - full.loglik) <= loose.err + full.err)
    np.testing.assert_array_equal(L.loglik_grid(y, x, w, sx, sw, bucket=16, accept=None).loglik, full.loglik)
    with pytest.raises(ValueError, match="accept"):
        L.loglik_grid(y, x, w, sx, sw, accept=-1.0)


def test_loglik_grid_accept_ends_the_tiers_once_a_value_is_within_it(monkeypatch):
    """With ``accept``, an observation leaves the chain of robust tiers as soon as its best value so
    far has an error estimate within ``accept`` (the tiers' own target, 1e-9, is not needed): the
    later tiers see fewer observations (counted on the real tier function), and every value is
    within its estimate of the full-accuracy one."""
    from noisydot_sbc.likelihoods import grid as G

    seen = []
    real = G._grid_tier

    def counting(*args, **kw):
        seen.append((kw["tier"], args[0].shape[0]))
        return real(*args, **kw)

    monkeypatch.setattr(G, "_grid_tier", counting)
    y, x, w, sx, sw = _accept_case()
    n = y.shape[1]
    calls = {}
    for accept in (None, 1e-6):
        seen.clear()
        calls[accept] = (L.loglik_grid(y, x, w, sx, sw, bucket=16, accept=accept), [t for t, _ in seen])
    (full, tiers_full), (loose, tiers_loose) = calls[None], calls[1e-6]
    later = lambda tiers: sum(t != "medium" for t in tiers)   # calls of 16 observations each
    assert later(tiers_full) >= 4                                  # 93 observations: 6 calls
    assert later(tiers_loose) < later(tiers_full) // 2             # none
    assert np.all(np.abs(loose.loglik - full.loglik) <= loose.err + full.err)
    assert np.all(loose.err <= full.err + n * 1e-6)

def test_loglik_grid_compiles_two_fast_pass_programs_whatever_the_point_count():
    """Phase 1 pads its blocks to one of two sizes: calls with 1..12 points per replicate (3 to 36
    points in all, N = 200 so a full block is 40 points) add at most two compiled programs; a block
    sized to each call's count compiled one per count (a quadrature's calls vary their counts)."""
    from noisydot_sbc.likelihoods import grid as G

    rng = np.random.default_rng(3)
    s, n, m = 3, 200, 1
    x, w = rng.normal(size=(s, n, m)), rng.normal(size=(s, m))
    y = np.einsum("snm,sm->sn", x, w) + 0.3 * rng.normal(size=(s, n))
    before = G._grid_fast._cache_size()
    for k in range(1, 13):
        sx = np.full((s, k), 0.3)
        g = L.loglik_grid(y, x, w, sx, np.full((s, k), 0.05))
        assert g.loglik.shape == (s, k) and np.all(np.isfinite(g.loglik))
    assert G._grid_fast._cache_size() - before <= 2


def test_loglik_grid_bad_input():
    y, x, w = np.zeros((2, 3)), np.ones((2, 3, 2)), np.ones((2, 2))
    good = np.full((2, 4), 0.2)
    with pytest.raises(ValueError, match="x_noise_lvl"):
        L.loglik_grid(y, x, w, -good, good)
    with pytest.raises(ValueError, match="w_noise_lvl"):
        L.loglik_grid(y, x, w, good, np.full((3, 4), 0.2))
    with pytest.raises(ValueError, match="y"):
        L.loglik_grid(np.zeros((2, 4)), x, w, good, good)
    with pytest.raises(ValueError, match="w"):
        L.loglik_grid(y, x, np.zeros((2, 2)), good, good)


@pytest.mark.slow
def test_stored_references_are_reproduced():
    """Every stored reference value recomputed by its scipy quadrature: the same to 1e-12 (relative)."""
    assert len(_STORE) >= 60
    for key, entry in _STORE.items():
        args = [np.asarray(a) if isinstance(a, list) else a for a in entry["args"]]
        value = _REFS[entry["fn"]](*args)   # the undecorated reference: computed, never looked up
        assert abs(np.log(value) - np.log(entry["value"])) < 1e-12, key
