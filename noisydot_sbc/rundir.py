"""The run folder: where a task writes, which config it belongs to, and who is writing to it.

``with prepare(cfg) as out:`` is how every task starts:

1. :func:`noisydot_sbc.config.validate_config` (a config that cannot run leaves nothing behind);
2. the folder (Hydra's ``hydra.run.dir``, or ``output_dir`` outside Hydra) is created and LOCKED
   (:func:`noisydot_sbc.results.run_lock`) for the lifetime of the ``with`` block: a second run
   started in the same folder meanwhile is refused at once (``results.RunLocked``, one line naming
   the holder's pid) instead of computing every chunk a second time;
3. the config fingerprint is compared with the one stored in the folder: the same config resumes;
   a different config is refused if the folder holds finished chunks (the message lists the keys
   that differ and what deleting would lose), and replaces the stored one if it holds none.

The fingerprint hashes everything that changes a task's results: not the progress bar, not
Hydra's settings, not the output folder, not the study cell's label (``study``), and the
measured data (``data``) only for a task that reads them (``task=fit``), by the file's contents
rather than its path; so the identical command started from another directory resumes.

"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig, OmegaConf

from . import config as _config

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "config_fingerprint.txt"  # in <folder>/chunks/, next to the chunks it vouches for
FINGERPRINT_CONFIG = "config_fingerprint.yaml"  # the config that was hashed (to list what differs)
NOT_RESULTS = ("hydra", "progress", "output_dir", "study", "compilation_cache")  # top-level keys that never change results


class RunFolderError(ValueError):
    """The run folder holds finished chunks of another configuration."""


def output_dir(cfg) -> Path:
    """The folder the task writes to: Hydra's run folder, else ``cfg.output_dir`` (compose API)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    out = cfg.get("output_dir") if hasattr(cfg, "get") else None
    if not out:
        raise ValueError("output_dir must be set when a task runs outside Hydra")
    return Path(str(out)).resolve()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def results_config(cfg) -> dict:
    """The part of ``cfg`` that changes the results, as plain data (what :func:`fingerprint` hashes)."""
    c = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if isinstance(cfg, DictConfig) else dict(cfg)
    c = {k: v for k, v in c.items() if k not in NOT_RESULTS}
    if not _config.reads_data(cfg):
        c.pop("data", None)
    elif "data" in c:
        data = dict(c["data"])
        for key, resolve in (("path", _config.data_path), ("weights_path", _config.weights_path)):
            p = resolve(cfg)
            # the contents, not the path: the same file reached from another directory is the same run
            data[key] = f"sha256:{_file_digest(p)}" if p is not None and p.is_file() else data.get(key)
        c["data"] = data
    return c


def fingerprint(cfg) -> str:
    """A 16-hex-digit hash of :func:`results_config`."""
    return hashlib.sha256(json.dumps(results_config(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(d, prefix=""):
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every leaf that differs (keys present in only one side included)."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "<absent>") != b.get(k, "<absent>")]


def check_fingerprint(folder, cfg) -> str:
    """Compare ``cfg`` with the config whose chunks ``folder`` holds; store it when there is none.

    Refuses (:class:`RunFolderError`) a different config only when finished chunks exist; returns
    the fingerprint."""
    from .results import finished_chunks

    chunks = Path(folder) / "chunks"
    chunks.mkdir(parents=True, exist_ok=True)
    stamp, stamp_cfg = chunks / FINGERPRINT_FILE, chunks / FINGERPRINT_CONFIG
    fp, now = fingerprint(cfg), results_config(cfg)
    old = stamp.read_text().strip() if stamp.exists() else None
    if old is not None and old != fp:
        before = OmegaConf.to_container(OmegaConf.load(stamp_cfg)) if stamp_cfg.exists() else {}
        diff = config_diff(before, now)
        what = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "") if diff else "unknown keys"
        done = finished_chunks(chunks)
        if done:
            raise RunFolderError(
                f"{folder} holds {len(done)} finished chunk(s) of another configuration ({what}); rerun with "
                "that configuration to resume it, or choose another hydra.run.dir (deleting the folder "
                f"discards those {len(done)} chunk(s) of finished fits)"
            )
        log.warning("%s held no finished chunk of its previous configuration (%s); starting afresh", folder, what)
    if old != fp:
        from ._validation import atomic_write

        atomic_write(stamp_cfg, lambda p: Path(p).write_text(OmegaConf.to_yaml(OmegaConf.create(now))))
        atomic_write(stamp, lambda p: Path(p).write_text(fp + "\n"))
    return fp


@contextlib.contextmanager
def prepare(cfg) -> Iterator[Path]:
    """``with prepare(cfg) as out:``: validate, create and lock the run folder, check the fingerprint.

    Yields the folder (``out / "chunks"`` is the chunk store). Raises
    :class:`noisydot_sbc.config.ConfigError`, ``results.RunLocked`` or :class:`RunFolderError`
    (one line each) before anything is written."""
    from .results import run_lock

    _config.validate_config(cfg)
    out = output_dir(cfg)
    with run_lock(out):
        check_fingerprint(out, cfg)
        yield out
