"""The one atomic-write helper: whole files or nothing, normal permissions, stale temporaries."""

import os
import time

import pytest

from flare_seg import atomic


def test_write_text_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    atomic.write_text(target, "old")
    atomic.write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_failing_writer_leaves_target_untouched_and_no_temporary(tmp_path):
    target = tmp_path / "case.nii.gz"
    target.write_text("previous result")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["case.nii.gz"]


def test_new_files_get_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        atomic.write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


def test_temporary_names_keep_compound_suffixes_and_are_recognised(tmp_path):
    for name, suffix in [("c_0000.nii.gz", ".nii.gz"), ("model.weights.h5", ".weights.h5"), ("qc.png", ".png")]:
        tmp = atomic.temporary_path(tmp_path / name)
        assert tmp.name.endswith(suffix) and tmp.name.startswith(".") and atomic.is_temporary(tmp)
        assert not tmp.name.endswith("_0000.nii.gz")
    assert not atomic.is_temporary(tmp_path / "case.nii.gz")


def test_folder_is_swapped_in_whole(tmp_path):
    target = tmp_path / "checkpoint"
    for step in (1, 2):
        with atomic.atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "state.json").write_text(str(step))
    assert (target / "state.json").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="output folder .* does not exist"):
        atomic.write_text(tmp_path / "nope" / "x.txt", "x")


def test_remove_stale_temporaries_keeps_fresh_ones_and_results(tmp_path):
    stale = atomic.temporary_path(tmp_path / "a.nii.gz")
    fresh = atomic.temporary_path(tmp_path / "b.nii.gz")
    result = tmp_path / "c.nii.gz"
    for p in (stale, fresh, result):
        p.write_text("x")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert atomic.remove_stale_temporaries(tmp_path, older_than_seconds=3600) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, result.name])
