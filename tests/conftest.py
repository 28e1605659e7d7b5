"""Suite-wide settings: float64 for accuracy tests (float32 tests request float32 arrays), and one
persistent JAX compilation cache for the whole test session.

The cache folder is shared by both xdist workers (same test-run id) and inherited, through the
environment, by the ``run.py`` subprocesses that the command and fault tests start, so each
program is compiled once per session instead of once per process (most of the suite's time is
compilation). It is a fresh folder per session: a clean clone's CI run starts from an empty cache."""
import os
import tempfile

import jax

_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"noisydot_sbc_tests_jax_cache_{_RUN}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_enable_x64", True)
