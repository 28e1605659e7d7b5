"""The run folder (issue 12 items 4 and 5): fingerprint, resume rules, the lock, the folder name."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from noisydot_sbc import results, rundir
from noisydot_sbc.config import ConfigError, compose

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "sample_measurements.nc"


def _cfg(out, *overrides):
    return compose([f"output_dir={out}", "model=gaussian", *overrides])


def test_fingerprint_ignores_what_does_not_change_results(tmp_path, monkeypatch):
    base = rundir.fingerprint(_cfg(tmp_path))
    assert rundir.fingerprint(_cfg(tmp_path / "elsewhere", "progress=false")) == base
    # task=sbc does not read the data: neither their path nor the directory the run starts from matter
    assert rundir.fingerprint(_cfg(tmp_path, f"data.path={tmp_path / 'nothing.nc'}")) == base
    monkeypatch.chdir(tmp_path)
    assert rundir.fingerprint(_cfg(tmp_path)) == base
    assert rundir.fingerprint(_cfg(tmp_path, "design.n_inputs=2")) != base
    assert rundir.fingerprint(_cfg(tmp_path, "seed=1")) != base


def test_fit_fingerprint_follows_the_data_contents_not_the_path(tmp_path, monkeypatch):
    copy = tmp_path / "copy.nc"
    copy.write_bytes(DATA.read_bytes())
    a = rundir.fingerprint(_cfg(tmp_path, "task=fit", f"data.path={DATA}"))
    monkeypatch.chdir(tmp_path)
    assert rundir.fingerprint(_cfg(tmp_path, "task=fit", "data.path=copy.nc")) == a
    copy.write_bytes(DATA.read_bytes() + b"\0")
    assert rundir.fingerprint(_cfg(tmp_path, "task=fit", "data.path=copy.nc")) != a


def test_a_config_that_fails_validation_leaves_nothing(tmp_path):
    with pytest.raises(ConfigError, match="^sbc.num_replicates"):
        with rundir.prepare(_cfg(tmp_path / "run", "sbc.num_replicates=0")):
            pass
    assert not (tmp_path / "run").exists()
    with rundir.prepare(_cfg(tmp_path / "run", "sbc.num_replicates=3")) as out:  # the corrected run is accepted
        assert out == tmp_path / "run"
    assert (out / "chunks" / rundir.FINGERPRINT_FILE).exists()


def _fake_chunk(chunks, index):
    """A finished chunk file as the chunk store sees one (the resume rules only count them)."""
    (chunks / f"chunk_{index:05d}.nc").write_bytes(b"")


def test_another_config_is_refused_only_when_finished_chunks_would_be_lost(tmp_path):
    with rundir.prepare(_cfg(tmp_path, "sbc.num_replicates=4")) as out:
        pass
    # nothing finished yet: the new config simply takes the folder over
    with rundir.prepare(_cfg(tmp_path, "sbc.num_replicates=5")):
        pass
    _fake_chunk(out / "chunks", 0)
    with rundir.prepare(_cfg(tmp_path, "sbc.num_replicates=5")):  # the same config resumes
        pass
    with pytest.raises(rundir.RunFolderError) as err:
        with rundir.prepare(_cfg(tmp_path, "sbc.num_replicates=6", "seed=2")):
            pass
    msg = str(err.value)
    assert "\n" not in msg
    assert "sbc.num_replicates: 5 -> 6" in msg and "seed: 0 -> 2" in msg  # what differs
    assert "discards those 1 chunk(s)" in msg  # what deleting would lose, not a bare "delete the folder"
    assert results.finished_chunks(out / "chunks") == {0}


def test_second_run_in_the_same_folder_is_refused_while_the_first_holds_it(tmp_path):
    with rundir.prepare(_cfg(tmp_path)):
        with pytest.raises(results.RunLocked, match=f"pid {os.getpid()}"):
            with rundir.prepare(_cfg(tmp_path)):
                pass
    with rundir.prepare(_cfg(tmp_path)):  # released when the first run ends
        pass


def _run_folder(cwd, *overrides):
    """The folder `python run.py <overrides>` writes to (the config is refused before any work, but
    Hydra has made the folder by then)."""
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "sbc.num_replicates=0", *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    before = set(_run_folder.seen.get(cwd, set()))
    now = {p.parent for p in Path(cwd, "outputs").rglob(".hydra")}
    _run_folder.seen[cwd] = now
    (new,) = now - before
    return new.name


_run_folder.seen = {}


def test_run_folder_is_named_by_every_override_that_changes_results(tmp_path):
    a = _run_folder(tmp_path, "model=gaussian", "prior=weak", "design.n_inputs=1", "progress=false")
    b = _run_folder(tmp_path, "design.n_inputs=2", "prior=weak", "model=gaussian")
    assert a != b  # design.n_inputs=1 and =2 no longer collide
    assert a.startswith("gaussian-weak-small-small-seed0,") and "design.n_inputs=1" in a
    assert "progress" not in a and "model=" not in a  # progress does not change results; the choices lead the name
    assert b == a.replace("design.n_inputs=1", "design.n_inputs=2")  # sorted: the same command, the same folder
