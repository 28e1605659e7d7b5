"""The one array-validation helper and the one atomic write."""
import os

import numpy as np
import pytest

from noisydot_sbc._validation import as_array, atomic_write


def test_as_array_kinds_and_conversions():
    assert as_array("a", [1, 2], kind="f").dtype == np.float64
    np.testing.assert_array_equal(as_array("a", [1.0, 2.0], kind="i"), [1, 2])
    assert as_array("a", [1.0, 2.0], kind="i").dtype == np.int64
    assert as_array("a", [0, 1], kind="b").dtype == bool
    s = as_array("a", np.array(["x", "yü"]), kind="U")
    assert s.dtype == object and list(s) == ["x", "yü"]
    with pytest.raises(ValueError, match="a must be integer.*fractional"):
        as_array("a", [1.5], kind="i")
    with pytest.raises(ValueError, match="a must be bool"):
        as_array("a", [2], kind="b")
    with pytest.raises(ValueError, match="a must hold strings"):
        as_array("a", [1.0], kind="U")
    with pytest.raises(ValueError, match="a must be numeric"):
        as_array("a", np.array(["1"]))
    with pytest.raises(ValueError, match="a must be 2-dimensional"):
        as_array("a", [1.0], ndim=2)
    with pytest.raises(ValueError, match="a must be 2 or 3-dimensional"):
        as_array("a", [1.0], ndim=(2, 3))
    with pytest.raises(ValueError, match="a is empty"):
        as_array("a", [])
    with pytest.raises(ValueError, match="kind"):
        as_array("a", [1.0], kind="z")


def test_as_array_finite_except_failed_rows():
    x = np.ones((3, 4))
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="x contains 1 non-finite value"):
        as_array("x", x)
    assert as_array("x", x, finite=False) is not None
    out = as_array("x", x, failed=[False, True, False])
    assert np.isnan(out[1, 2])
    with pytest.raises(ValueError, match=r"x contains non-finite values in 1 replicate\(s\) not marked failed \(first: replicate 1\)"):
        as_array("x", x, failed=[True, False, False])
    with pytest.raises(ValueError, match="failed must have shape"):
        as_array("x", x, failed=[True, False])
    # integers from floats: NaN in failed rows becomes the count placeholder -1
    np.testing.assert_array_equal(as_array("n", [3.0, np.nan], kind="i", failed=[False, True]), [3, -1])


def test_atomic_write_replaces_or_leaves_the_old_file(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write(path, lambda tmp: tmp.write_text("one"))
    assert path.read_text() == "one"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(path, broken)
    assert path.read_text() == "one"  # the old content survives
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]  # no temp file left
    atomic_write(path, lambda tmp: tmp.write_text("two"))
    assert path.read_text() == "two"
