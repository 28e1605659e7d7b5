"""The chunk store of a run folder: crash-safe chunk files and the run lock.

One job: keep a run's finished batches of replicates on disk so that a killed run resumes. Each
finished batch is written as ``run_dir/chunk_00003.nc`` by writing a temporary file in the same
folder and ``os.replace``-ing it (atomic on POSIX), so a killed run leaves either a complete chunk
or a ``.tmp`` file that :func:`finished_chunks` ignores and removes. A run resumes by computing
only the chunk indices not in :func:`finished_chunks`, and :func:`merge_chunks` joins them into
the run's Dataset; :func:`run_lock` keeps two runs in one folder from computing chunks at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path

import numpy as np
import xarray as xr

from .schema import _atomic_to_netcdf, load_dataset

__all__ = ["LOCK_NAME", "write_chunk", "RunLocked", "run_lock", "finished_chunks", "load_chunk", "merge_chunks"]

LOCK_NAME = "run.lock"
_CHUNK_RE = re.compile(r"^chunk_(\d{5,})\.nc$")
_TMP_RE = re.compile(r"^\.chunk_(\d{5,})\.nc\.(\d+)\..*\.tmp$")


def _chunk_path(run_dir, chunk_index: int) -> Path:
    if not isinstance(chunk_index, (int, np.integer)) or chunk_index < 0:
        raise ValueError(f"chunk_index must be a non-negative integer, got {chunk_index!r}")
    return Path(run_dir) / f"chunk_{int(chunk_index):05d}.nc"


def write_chunk(ds: xr.Dataset, run_dir, chunk_index: int) -> Path:
    """Atomically write one chunk as ``run_dir/chunk_NNNNN.nc``; returns the path."""
    path = _chunk_path(run_dir, chunk_index)
    if not isinstance(ds, xr.Dataset):
        raise ValueError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    _atomic_to_netcdf(ds, path)
    return path


class RunLocked(RuntimeError):
    """Another process holds the run folder's lock (see :func:`run_lock`)."""


@contextlib.contextmanager
def run_lock(run_dir, wait: bool = False):
    """Hold the exclusive lock of ``run_dir`` (``fcntl.flock`` on ``run_dir/run.lock``) for the
    ``with`` block, so that two runs in one folder never compute chunks at once.

    ``wait=False``: if another process holds it, raise :class:`RunLocked` at once with a one-line
    message naming the folder and the holder's pid; ``wait=True``: block until it is free. The
    lock goes with the process (a killed run frees it); the lock file stays (deleting it would
    race with a waiting run). Yields the lock file's path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunLocked(
                f"run folder {str(run_dir)!r} is in use by another run (pid {holder}); wait for it to finish, "
                "or choose another run folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers: calls are sequential, no write is in progress
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def finished_chunks(run_dir, clean: bool = True) -> set[int]:
    """Indices of complete chunk files in ``run_dir`` (empty set if the folder does not exist).

    Temporary files left by a killed write are ignored; with ``clean=True`` those whose writing
    process is no longer alive are deleted."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return set()
    if not run_dir.is_dir():
        raise ValueError(f"run_dir {str(run_dir)!r} is not a directory")
    done = set()
    for p in run_dir.iterdir():
        m = _CHUNK_RE.match(p.name)
        if m and p.is_file():
            done.add(int(m.group(1)))
            continue
        t = _TMP_RE.match(p.name)
        if t and clean and not _pid_alive(int(t.group(2))):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
    return done


def load_chunk(run_dir, chunk_index: int) -> xr.Dataset:
    """Load one chunk; ValueError naming the file when missing or unreadable."""
    path = _chunk_path(run_dir, chunk_index)
    if not path.is_file():
        raise ValueError(f"chunk {chunk_index} is missing: {str(path)!r}")
    return load_dataset(path)


def merge_chunks(run_dir, expected=None) -> xr.Dataset:
    """Concatenate all chunks of a run along ``replicate``, in chunk-index order.

    ``expected``: an int (chunks 0..expected-1 must all be there) or an iterable of indices;
    missing chunks raise ValueError listing them. Chunks must agree on quantity/parameter/chain/
    draw and on ``num_ranks``; replicate indices must not repeat."""
    done = sorted(finished_chunks(run_dir))
    if expected is not None:
        want = set(range(expected)) if isinstance(expected, (int, np.integer)) else {int(i) for i in expected}
        missing = sorted(want - set(done))
        if missing:
            raise ValueError(f"run_dir {str(run_dir)!r} is missing chunk(s) {missing}")
        done = sorted(want)
    if not done:
        raise ValueError(f"run_dir {str(run_dir)!r} holds no finished chunk")
    parts = [load_chunk(run_dir, i) for i in done]
    first = parts[0]
    for i, p in zip(done[1:], parts[1:]):
        for c in ("quantity", "parameter", "chain", "draw"):
            a = first.coords.get(c)
            b = p.coords.get(c)
            if (a is None) != (b is None) or (a is not None and not np.array_equal(a.values, b.values)):
                raise ValueError(f"chunk {i} has a different '{c}' coordinate than chunk {done[0]}")
        if p.attrs.get("num_ranks") != first.attrs.get("num_ranks"):
            raise ValueError(f"chunk {i} has num_ranks={p.attrs.get('num_ranks')} but chunk {done[0]} has {first.attrs.get('num_ranks')}")
    merged = xr.concat(parts, dim="replicate", data_vars="minimal", coords="minimal", compat="override",
                       join="exact", combine_attrs="override")
    rep = merged["replicate"].values
    if len(np.unique(rep)) != rep.size:
        raise ValueError("chunks repeat replicate indices: they do not belong to one run")
    merged.attrs["chunks"] = len(done)
    return merged
