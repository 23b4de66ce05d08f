"""Before resuming a study: put back the checkpoints Tune's saved state names but deleted.

Tune saves its experiment state at most every ~10 s, and deletes a trial's older checkpoint as
soon as a newer one is written (``num_to_keep=1``). A driver killed between the two leaves a
state naming a checkpoint that is gone, and the resumed Tune then fails the trial on every retry
("Could not recover from checkpoint as it does not exist on storage anymore";
ray-project/ray#27790). The newer checkpoint that replaced it is on disk, complete: it is moved
to the name the state expects, so the trial resumes from the newest state it saved (its steps
after the stale state's last result are not trained twice: the checkpoint holds its own step).

Reading the state unpickles Tune's checkpoint manager (``ray.cloudpickle``), the only way Tune
stores those paths; the move is a rename on the study's local storage (remote storage is
refused for study state, ``study.run.runner``).
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "trial_state.pt"  # study.run.trial.CHECKPOINT_FILE, without its Ray import
_UNFINISHED = {"PENDING", "RUNNING", "PAUSED"}


@dataclass(frozen=True)
class Repair:
    trial_dir: Path
    missing: str
    """The checkpoint folder Tune's state names (gone)."""
    moved_from: str | None
    """The newest complete checkpoint of the trial, now under the missing name; None if the trial
    had none left (it cannot resume and Tune will fail it)."""


def newest_checkpoint_dir(trial_dir: Path) -> Path | None:
    """The trial's newest ``checkpoint_NNNNNN`` folder whose state file is complete, or None."""
    candidates = sorted((p for p in trial_dir.glob("checkpoint_*") if p.is_dir()), reverse=True)
    for d in candidates:
        state = d / CHECKPOINT_FILE
        if state.is_file() and state.stat().st_size > 0:
            return d
    return None


def referenced_checkpoints(search_dir: Path) -> list[tuple[str, str]]:
    """(trial status, latest checkpoint path) of every trial in Tune's newest experiment state."""
    import ray.cloudpickle as cloudpickle

    states = sorted(glob.glob(str(search_dir / "experiment_state-*.json")))
    if not states:
        return []
    with open(states[-1]) as f:
        trial_data = json.load(f)["trial_data"]
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


def repair_missing_checkpoints(search_dir: str | os.PathLike) -> list[Repair]:
    """Move each unfinished trial's newest complete checkpoint to the name Tune's state expects,
    where that one is gone. Returns what was done."""
    return repair(referenced_checkpoints(Path(search_dir)), search_dir)


def repair(references: list[tuple[str, str]], search_dir: str | os.PathLike) -> list[Repair]:
    """``repair_missing_checkpoints`` on given (status, checkpoint path) pairs. Checkpoints outside
    ``search_dir`` (a state written with another machine's paths) are left alone."""
    search_dir = Path(search_dir).resolve()
    repairs = []
    for status, path in references:
        missing = Path(path)
        ours = search_dir in missing.parents and missing.name.startswith("checkpoint_")
        if status not in _UNFINISHED or missing.exists() or not ours:
            continue
        newest = newest_checkpoint_dir(missing.parent)
        if newest is not None:
            newest.rename(missing)
            log.warning("checkpoint %s was gone: resuming that trial from %s", missing, newest.name)
        else:
            log.warning("checkpoint %s is gone and its trial has no other: it cannot resume", missing)
        repairs.append(Repair(missing.parent, str(missing), str(newest) if newest else None))
    return repairs
