"""Suite-wide settings: float64 for accuracy tests (float32 tests request float32 arrays), and the
order in which the default run's two pytest-xdist workers get the test files.

Not set: ``jax_disable_most_optimizations``. It cuts compile time (tests/test_likelihoods.py
226 -> 193 s) but changes the results beyond the accuracy tests' tolerances (the M = 4 heavy corner
at y = 0 off by 3e-8 where 1e-10 is asserted, gradients through the robust tiers off by 1e-5
relative where 1e-6 is) and the pinned NUTS draws and SBC ranks.
"""
import jax

jax.config.update("jax_enable_x64", True)

# The default run (pyproject addopts: -n 2 --dist loadfile --no-loadscope-reorder) hands out whole
# files in collection order; these come first, the longest first (idle 2-core machine: about
# 200, 150, 55, 50, 45, 40, 40, 35, 30 s), so that the many short files fill in at the end and the
# two workers finish together (xdist's own order, most tests first, left the subprocess-heavy files
# with few tests for last).
FIRST = ["test_likelihoods.py", "test_distributions.py", "test_config.py", "test_study_command.py",
         "test_inference_nuts.py", "test_tasks_sbc.py", "test_faults.py", "test_identifiability.py",
         "test_quadrature.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))   # stable: tests keep their order within a file
