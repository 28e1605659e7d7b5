"""Fault injection on real `python run.py` SBC runs (issue 12): a run killed with SIGKILL at a
random point resumes to the same results.nc as an uninterrupted run, also when the identical
command is started from another directory; a second run started in the folder of a running one
is refused at once instead of computing every chunk again.

The runs share a JAX compilation cache (filled by the uninterrupted run before any kill, so a kill
never interrupts a cache write) to keep the compile time of each process small.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from noisydot_sbc import results

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=gaussian", "sbc.num_replicates=4", "sbc.chunk_size=1", "sbc.num_ranks=9", "sampler.num_warmup=30",
        "sampler.num_samples=20", "sampler.max_tree_depth=3", "design.n_obs=10", "design.n_inputs=2",
        "progress=false", "seed=4"]
N_CHUNKS = 4
TIMING = {"wall_time_share"}  # variables that measure time, not results
TIMING_ATTRS = {"created", "compile_time"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The runs' environment: a shared JAX compilation cache; JAX picks its platform itself (as for a
    user, so its backend probing would show on the console if run.py let it), and a fresh user cache
    folder, so ArviZ's once-a-day notice would be printed if run.py let it."""
    import matplotlib

    cache = tmp_path_factory.mktemp("jax_cache")
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1", "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache")),
           "MPLCONFIGDIR": matplotlib.get_cachedir()}  # keep matplotlib's font cache
    env.pop("JAX_PLATFORMS", None)
    return env


def _start(folder, env, cwd=ROOT):
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *TINY, f"hydra.run.dir={folder}"], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=600):
    """Exit status and the console (stdout, where Hydra logs, then stderr)."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def _wait_for(condition, proc, timeout=600):
    """Poll until ``condition()`` holds (or the process has ended); no assertion on how long it took."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _holds_lock(folder, proc):
    lock = Path(folder) / results.LOCK_NAME
    return lambda: lock.exists() and lock.read_text().strip() == str(proc.pid)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """The uninterrupted run; while it holds its folder (paused with SIGSTOP, so it cannot finish
    first), the same command in the same folder is started and must be refused."""
    folder = tmp_path_factory.mktemp("reference")
    first = _start(folder, env)
    assert _wait_for(_holds_lock(folder, first), first), _finish(first)[1][-3000:]
    os.kill(first.pid, signal.SIGSTOP)
    chunks_before = results.finished_chunks(folder / "chunks", clean=False)
    try:
        second = subprocess.run([sys.executable, str(ROOT / "run.py"), *TINY, f"hydra.run.dir={folder}"], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=600)
        chunks_while_paused = results.finished_chunks(folder / "chunks", clean=False)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    rc, err = _finish(first)
    assert rc == 0, err[-3000:]
    return {"path": folder / "results.nc", "second": second, "console": err, "new_chunks": chunks_while_paused - chunks_before}


def _compare(path, ref_path):
    with xr.open_dataset(path) as a, xr.open_dataset(ref_path) as b:
        assert set(a.data_vars) == set(b.data_vars)
        assert a.sizes == b.sizes
        for name in sorted(set(a.data_vars) - TIMING):
            x, y = a[name].values, b[name].values
            same = np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
            assert same, f"{name} differs after the resume"
        for k in set(a.attrs) | set(b.attrs):
            if k not in TIMING_ATTRS:
                assert a.attrs.get(k) == b.attrs.get(k), k


def test_two_runs_in_one_folder_the_second_is_refused(reference):
    second = reference["second"]
    assert second.returncode != 0
    assert "in use by another run" in second.stderr and "Traceback" not in second.stderr
    assert second.stderr.strip().count("\n") == 0, second.stderr  # one line
    assert reference["new_chunks"] == set()  # the refused run wrote nothing
    ds = results.load_dataset(reference["path"])
    assert ds.sizes["replicate"] == 4 and int(ds.attrs["chunks"]) == N_CHUNKS


def test_console_shows_only_what_the_user_needs(reference):
    """Issue 12 item 8: no JAX backend probing, no ArviZ refactor notice or optional-package INFO."""
    console = reference["console"]
    for noise in ("Unable to initialize backend", "ArviZ is undergoing", "FutureWarning", "not installed"):
        assert noise not in console, console[-2000:]
    assert "SBC done" in console


def _killed_and_resumed(seed, reference, env, tmp_path):
    """Kill at a random point: after a random number of finished chunks plus a random delay; then
    rerun the identical command from another directory and compare with the reference."""
    rng = np.random.default_rng(seed)
    after_chunks, delay = int(rng.integers(0, N_CHUNKS)), float(rng.uniform(0.0, 1.5))
    folder = tmp_path / "run"
    proc = _start(folder, env)
    chunks = folder / "chunks"
    if after_chunks == 0:
        _wait_for(_holds_lock(folder, proc), proc)
    else:
        _wait_for(lambda: len(results.finished_chunks(chunks, clean=False)) >= after_chunks, proc)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=600)
    killed_with = len(results.finished_chunks(chunks, clean=False)) if chunks.exists() else 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rc, err = _finish(_start(folder, env, cwd=elsewhere))
    assert rc == 0, err[-3000:]
    _compare(folder / "results.nc", reference["path"])
    leftovers = [p.name for p in chunks.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers  # temporary files of the killed write were cleaned up
    return killed_with


def test_sigkill_at_a_random_point_resumes_to_the_uninterrupted_results(reference, env, tmp_path):
    _killed_and_resumed(0, reference, env, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_sigkill_more_seeds(seed, reference, env, tmp_path):
    _killed_and_resumed(seed, reference, env, tmp_path)
