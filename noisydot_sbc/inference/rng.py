"""Counter-based random numbers for the step-wise kernels: Threefry-2x32, unrolled.

Each replicate-chain draws the random numbers of a step as one hash of (its key, its step
counter), so its stream does not depend on how replicates are mapped (sequential, vectorised,
sharded). The hash is the one behind ``jax.random`` but written out with ``jnp`` operations:
on CPU ``jax.random`` lowers Threefry to a rolled loop (a nested while loop per call), which
dominated the cost of a batched NUTS step; unrolled, XLA fuses it into the surrounding
elementwise code. No library offers a fused counter-based uniform generator, hence this module.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["threefry2x32", "uniforms", "normal_from_uniform", "key_data"]


def _rotl(x, r):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32 (20 rounds) on uint32 arrays; bit-identical to jax's ``threefry2x32_p``."""
    k1, k2, x1, x2 = (jnp.asarray(a, jnp.uint32) for a in (k1, k2, x1, x2))
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    x1 = x1 + ks[0]
    x2 = x2 + ks[1]
    for i in range(5):
        for r in rotations[i % 2]:
            x1 = x1 + x2
            x2 = _rotl(x2, r)
            x2 = x1 ^ x2
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def uniforms(key_words, counter, n, dtype):
    """``n`` uniforms in [0, 1) from (key, counter): one fused Threefry hash.

    ``key_words``: uint32[2] (see :func:`key_data`); ``counter``: uint32 scalar. float64 uses
    53 random bits per number (two words), float32 24 bits (one word)."""
    wide = jnp.dtype(dtype) == jnp.float64
    words = n * (2 if wide else 1)
    pairs = -(-words // 2)
    j = jnp.arange(pairs, dtype=jnp.uint32)
    c = jnp.broadcast_to(jnp.asarray(counter, jnp.uint32), j.shape)
    h1, h2 = threefry2x32(key_words[0], key_words[1], c, j)
    bits = jnp.concatenate([h1, h2])[:words]
    if wide:
        hi, lo = bits[:n], bits[n:]
        return ((hi >> np.uint32(5)).astype(dtype) * 2.0**26 + (lo >> np.uint32(6)).astype(dtype)) * 2.0**-53
    return (bits >> np.uint32(8)).astype(dtype) * np.float32(2.0**-24)


def normal_from_uniform(u):
    """Standard normals from uniforms in [0, 1) (clipped to the open interval)."""
    eps = jnp.finfo(u.dtype).eps
    u = jnp.clip(u, eps, 1 - eps)
    return np.sqrt(2.0).astype(u.dtype) * lax.erf_inv(2 * u - 1)


def key_data(key):
    """uint32[2] words of a raw or typed PRNG key."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return key.astype(jnp.uint32).reshape(-1)[-2:]
