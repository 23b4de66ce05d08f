"""Before resuming a study: put back the checkpoints Tune's saved state names but deleted.

Tune saves its experiment state at most every ~10 s, and deletes a trial's older checkpoint as
soon as a newer one is written (``num_to_keep=1``). A driver killed between the two leaves a
state naming a checkpoint that is gone, and the resumed Tune then fails the trial on every retry
("Could not recover from checkpoint as it does not exist on storage anymore";
ray-project/ray#27790). The newer checkpoint that replaced it is on disk, complete: it is moved
to the name the state expects, so the trial resumes from the newest state it saved (its steps
after the stale state's last result are not trained twice: the checkpoint holds its own step).

Reading the state unpickles Tune's checkpoint manager (``ray.cloudpickle``), the only way Tune
stores those paths. On a local folder the move is a rename; on remote storage (a pyarrow
filesystem, the one Tune was given: ``study.run.storage``) the same operations go through that
filesystem, and a folder an object store cannot rename is copied, then deleted.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "trial_state.pt"  # study.run.trial.CHECKPOINT_FILE, without its Ray import
_UNFINISHED = {"PENDING", "RUNNING", "PAUSED"}


@dataclass(frozen=True)
class Repair:
    trial_dir: Path | PurePosixPath
    missing: str
    """The checkpoint folder Tune's state names (gone)."""
    moved_from: str | None
    """The newest complete checkpoint of the trial, now under the missing name; None if the trial
    had none left (it cannot resume and Tune will fail it)."""


def newest_checkpoint_dir(trial_dir: Path | str, filesystem: Any = None) -> Path | PurePosixPath | None:
    """The trial's newest ``checkpoint_NNNNNN`` folder whose state file is complete, or None.
    ``filesystem``: the pyarrow filesystem ``trial_dir`` is on (None: a local path)."""
    import pyarrow.fs as pafs

    fs = filesystem or pafs.LocalFileSystem()
    listing = fs.get_file_info(pafs.FileSelector(str(trial_dir), allow_not_found=True))
    candidates = sorted((i.path for i in listing if i.type == pafs.FileType.Directory
                         and posixpath.basename(i.path).startswith("checkpoint_")), reverse=True)
    for d in candidates:
        state = fs.get_file_info(posixpath.join(d, CHECKPOINT_FILE))
        if state.type == pafs.FileType.File and (state.size or 0) > 0:
            return Path(d) if filesystem is None else PurePosixPath(d)
    return None


def referenced_checkpoints(search_dir: Path | str, filesystem: Any = None) -> list[tuple[str, str]]:
    """(trial status, latest checkpoint path) of every trial in Tune's newest experiment state."""
    import pyarrow.fs as pafs
    import ray.cloudpickle as cloudpickle

    fs = filesystem or pafs.LocalFileSystem()
    listing = fs.get_file_info(pafs.FileSelector(str(search_dir), allow_not_found=True))
    states = sorted(i.path for i in listing if i.type == pafs.FileType.File
                    and posixpath.basename(i.path).startswith("experiment_state-")
                    and i.path.endswith(".json"))
    if not states:
        return []
    with fs.open_input_stream(states[-1]) as f:
        trial_data = json.loads(f.read().decode())["trial_data"]
    out = []
    for trial_json, run_metadata_json in trial_data:
        status = json.loads(trial_json).get("status", "")
        manager = json.loads(run_metadata_json).get("checkpoint_manager") or {}
        if "value" not in manager:
            continue
        latest = cloudpickle.loads(bytes.fromhex(manager["value"])).latest_checkpoint_result
        if latest is not None:
            out.append((status, latest.checkpoint.path))
    return out


def repair_missing_checkpoints(search_dir: str | os.PathLike, filesystem: Any = None) -> list[Repair]:
    """Move each unfinished trial's newest complete checkpoint to the name Tune's state expects,
    where that one is gone. Returns what was done. ``filesystem``: the pyarrow filesystem Tune
    stores the study on (None: ``search_dir`` is a local path)."""
    return repair(referenced_checkpoints(search_dir, filesystem), search_dir, filesystem)


def repair(references: list[tuple[str, str]], search_dir: str | os.PathLike,
           filesystem: Any = None) -> list[Repair]:
    """``repair_missing_checkpoints`` on given (status, checkpoint path) pairs. Checkpoints outside
    ``search_dir`` (a state written with another machine's paths) are left alone."""
    import pyarrow.fs as pafs

    fs = filesystem or pafs.LocalFileSystem()
    local = filesystem is None
    root = Path(search_dir).resolve() if local else PurePosixPath(str(search_dir))
    repairs = []
    for status, path in references:
        missing = Path(path) if local else PurePosixPath(path)
        ours = root in missing.parents and missing.name.startswith("checkpoint_")
        exists = fs.get_file_info(str(missing)).type != pafs.FileType.NotFound
        if status not in _UNFINISHED or exists or not ours:
            continue
        newest = newest_checkpoint_dir(missing.parent, filesystem)
        if newest is not None:
            _move_dir(fs, str(newest), str(missing))
            log.warning("checkpoint %s was gone: resuming that trial from %s", missing, newest.name)
        else:
            log.warning("checkpoint %s is gone and its trial has no other: it cannot resume", missing)
        repairs.append(Repair(missing.parent, str(missing), str(newest) if newest else None))
    return repairs


def _move_dir(fs: Any, src: str, dst: str) -> None:
    """Rename a folder; where the filesystem cannot (object stores), copy it, then delete it."""
    import pyarrow.fs as pafs

    try:
        fs.move(src, dst)
    except (OSError, NotImplementedError):  # pyarrow.ArrowNotImplementedError is one of these
        fs.create_dir(dst, recursive=True)
        pafs.copy_files(src, dst, source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(src)
