"""A trial whose checkpoint named in Tune's (stale) experiment state is gone restores from the
newest complete one (trainables.tune_trainable.ResilientTrialFunction)."""

from __future__ import annotations

import pyarrow.fs as pafs

from trainables.tune_trainable import CHECKPOINT_FILE, ResilientTrialFunction, newest_checkpoint_dir


def test_newest_complete_checkpoint_is_chosen(tmp_path):
    fs = pafs.LocalFileSystem()
    for n, complete in ((1, True), (2, True), (3, False)):  # 3: killed while being written
        d = tmp_path / f"checkpoint_{n:06d}"
        d.mkdir()
        if complete:
            (d / CHECKPOINT_FILE).write_bytes(b"state")
    (tmp_path / "result.json").write_text("{}")
    assert newest_checkpoint_dir(fs, str(tmp_path)) == str(tmp_path / "checkpoint_000002")
    assert newest_checkpoint_dir(fs, str(tmp_path / "missing")) is None


def test_the_trainable_keeps_the_trial_function_name():
    # trial folders, Tune's registry and resumed studies know the trainable by this name
    assert repr(ResilientTrialFunction.__new__(ResilientTrialFunction)) == "trial_function"
