"""Run a study: reference router first, then the search, on Ray Tune with Optuna and MLflow.

``run_study(spec)``: check what can be checked before any work starts (spec, name, storage,
resources), then start or join Ray while a thread checks the tracking store, builds (or checks)
the data mix and opens the MLflow experiment, the study's parent run and the Optuna copy; run
(or reuse) the reference-router trial, before or beside the search (``study.run.reference``),
and the Optuna search with ASHA. ``resume_study(name)`` continues an interrupted study from its
Tune experiment state.

Layout of a study on the storage (local folder by default, ``s3://...`` on a cluster; any URI
``pyarrow.fs`` opens, ``study.run.storage``): ``<storage>/<name>/study.json`` (what resume needs),
``<storage>/<name>/mlflow-spool.jsonl`` (undelivered MLflow writes),
``<storage>/<name>/optuna.db`` (the study's Optuna copy, ``study.run.optuna_store``; on remote
storage in this machine's folder of the study) and ``<storage>/<name>/{reference,search}`` (Tune).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable

from trainables.config import TrialConfig
from trainables.errors import ConfigError, brief, did_you_mean, name_problem

from study import naming
from study.spec import spec_from_dict
from study.spec.types import StudySpec
from study.run import storage as study_storage
# what the largest node offers, counting the node types the autoscaler may launch
from study.run.cluster_resources import autoscaler_node_types as _autoscaler_node_types
from study.run.cluster_resources import largest_node as _largest_node
from study.run.storage import StorageFile
from study.run.study_lock import hold_study_lock
from study.run.trial_context import TrialContext

STATE_FILE = "study.json"
SEARCH_DIR = "search"
EXIT_INTERRUPTED = 130
GCS_START_WAIT_S = 60
"""Seconds a local Ray start waits for its GCS (Ray's default is about 20)."""
REFERENCE_START_WAIT_S = 120
"""How long the search waits for a reference running beside it to get its resources."""


class StudyFailed(RuntimeError):
    """The study could not run (not a bad input): exit code 1."""


# -- locations -------------------------------------------------------------------------------
def storage_root(storage: str | None) -> str:
    """``--storage``, else $MOE_STUDY_STORAGE, else ./runs: a local folder (made absolute) or a
    URI (``s3://bucket/prefix``). ConfigError if pyarrow cannot open the URI, it holds
    credentials or names a bucket that does not exist; StudyFailed if the store cannot be
    reached (``study.run.storage.check_root``): before anything is written or opened."""
    root = study_storage.resolve_root(storage or os.environ.get("MOE_STUDY_STORAGE") or "runs")
    try:
        study_storage.check_root(root)
    except OSError as exc:  # network, refused credentials: not the input's fault
        raise StudyFailed(f"--storage {root}: the storage cannot be reached ({exc})") from exc
    return root


def check_study_name(name: str, what: str) -> None:
    """A study name is a folder under the storage root and an MLflow experiment name: one rule
    (``trainables.errors.name_problem``), so ``../x`` or ``/abs`` cannot move the state out."""
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"{what} {brief(name)}: the study name {problem}")


def state_file(root: str, name: str) -> StorageFile:
    """Where study ``name`` keeps its state under a storage root."""
    return StorageFile(root, f"{name}/{STATE_FILE}")


def stored_study_names(root: str) -> list[str]:
    """The studies kept under a storage root: the folders holding a ``study.json`` (sorted;
    empty when the root is not there)."""
    return [n for n in study_storage.folder_names(root) or []
            if not name_problem(n) and state_file(root, n).exists()]


# -- pre-flight checks ------------------------------------------------------------------------
def _fail_tracking_requests_fast() -> None:
    """Few HTTP retries for MLflow: the tracker's delivery queue does the retrying, so an outage
    must not block Tune's driver loop (or the pre-flight check) for minutes of back-off
    (MLflow's default: 7 retries with exponential back-off)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def check_tracking(tracking_uri: str) -> None:
    from study.run.tracking import check_tracking_reachable

    _fail_tracking_requests_fast()
    try:
        check_tracking_reachable(tracking_uri)
    except Exception as exc:  # noqa: BLE001 - any connection error means the same to the user
        raise StudyFailed(f"MLflow tracking at {tracking_uri} is not reachable: {exc}") from exc


def local_resources(count_gpus: bool = True) -> dict[str, float]:
    """This machine's CPUs and (``count_gpus``) CUDA devices. Counting GPUs imports torch, seconds
    a CPU-only study spends before Ray starts; its data preparation imports torch beside Ray's
    start instead."""
    if not count_gpus:
        return {"CPU": float(os.cpu_count() or 1), "GPU": 0.0}
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def check_resources(spec: StudySpec, available: dict[str, float]) -> None:
    need = spec.resources.per_trial()
    problems = [
        f"resources: a trial needs {kind} {need[kind]:g} but no node has more than {available.get(kind, 0):g}"
        for kind in ("CPU", "GPU")
        if need[kind] > available.get(kind, 0) + 1e-9
    ]
    if problems:
        raise ConfigError(problems)


def check_cluster_resources(spec: StudySpec, address: str) -> None:
    """``check_resources`` against the cluster at ``address``: its live nodes and the node types
    its autoscaler may launch (``study.run.cluster_resources``). Connects and leaves again."""
    import ray

    joined = not ray.is_initialized()
    if joined:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        check_resources(spec, _largest_node(ray.nodes(), _autoscaler_node_types()))
    finally:
        if joined:
            ray.shutdown()


def max_concurrent(spec: StudySpec, available: dict[str, float]) -> int:
    if spec.resources.max_concurrent != "auto":
        return int(spec.resources.max_concurrent)
    need = spec.resources.per_trial()
    fits = [available.get(k, 0) / need[k] for k in ("CPU", "GPU") if need[k] > 0]
    return max(1, int(math.floor(min(fits)))) if fits else 1


# -- the local Ray cluster --------------------------------------------------------------------
LOOPBACK = "127.0.0.1"
# Ray 2.60 turns a node IP of 127.0.0.1 into the machine's network address (and its servers then
# listen on every interface) unless multi-node clusters are off, as they are on macOS by default.
# Read when ray is imported; the module constant is what ray.init consults afterwards.
_MULTI_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def local_ray(**init_kwargs):
    """A Ray cluster of this machine alone, for the block: started, then shut down.

    Every Ray process listens on 127.0.0.1 only (node IP, GCS, raylet, agents, workers and the
    dashboard if there is one), and Ray's token authentication is on. The token is the one in
    ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` if set, else a random one made for this process
    and kept only in its environment (Ray's processes inherit it; nothing is written to disk).
    ``RAY_AUTH_MODE=disabled`` is ignored. The authentication settings stay in this process's
    environment afterwards (Ray caches them per process); the loopback setting is put back.
    Raises StudyFailed if Ray came up on another address anyway.
    """
    import ray
    from ray._private import ray_constants

    saved = (os.environ.get(_MULTI_NODE_ENV), ray_constants.ENABLE_RAY_CLUSTER)
    os.environ[_MULTI_NODE_ENV] = "0"  # Ray's processes, started below, read it at import
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported ray already
    # unset, Ray 2.60 turns token authentication on for a new local cluster and refreshes the
    # setting it caches per process (set here, a cached "disabled" would stay in this process
    # while Ray's own processes demand a token)
    os.environ.pop("RAY_AUTH_MODE", None)
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # this process reads the token now, not the one it cached for an earlier cluster (a second
    # study, or a test, in one process): its Ray processes inherit the environment's
    from ray._raylet import AuthenticationTokenLoader

    AuthenticationTokenLoader.instance().reset_cache()
    # Ray waits ~20 s for its new GCS to answer, which a loaded 2-core machine can miss (a
    # ConnectionError before any work): a minute, unless the user set Ray's own knob
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(GCS_START_WAIT_S))
    # Ray's notice "set RAY_AUTH_MODE=disabled to opt out" does not hold for a study's Ray
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = notice.level
    notice.setLevel(logging.ERROR)
    try:
        # "local": a new cluster, never one a `ray start` on this machine left in Ray's
        # address file (ray.init() without an address would join that one)
        ray.init(address="local", _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK, **init_kwargs)
    finally:
        notice.setLevel(level)
        if saved[0] is None:
            os.environ.pop(_MULTI_NODE_ENV, None)
        else:
            os.environ[_MULTI_NODE_ENV] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]
    try:
        node_ip = ray.util.get_node_ip_address()
        if node_ip != LOOPBACK or os.environ.get("RAY_AUTH_MODE") != "token":
            raise StudyFailed(f"the local Ray cluster came up on {node_ip} with authentication "
                              f"{os.environ.get('RAY_AUTH_MODE', 'disabled')}; a study's own Ray "
                              f"must be on {LOOPBACK} with token authentication (Ray "
                              f"{ray.__version__}: the project is tested with 2.60.0)")
        yield
    finally:
        ray.shutdown()


# -- the study --------------------------------------------------------------------------------
OnSuccess = Callable[[str, str, str, str], None]
"""Called with (study name, tracking URI, MLflow experiment, objective metric) after a study ends
well: the command line prints the best trials (reading results is not the runner's job)."""


def run_study(
    spec: StudySpec,
    *,
    tracking_uri: str,
    address: str | None = None,
    name: str | None = None,
    storage: str | None = None,
    on_success: OnSuccess | None = None,
    verbose: bool = False,
) -> int:
    """Run ``spec`` as a new study; ``on_success`` is called once it ends with exit code 0.
    ``verbose`` lets Ray's, Tune's and Optuna's own output through.

    The study's folder and lock are taken at the "does it exist" check and held to the end
    (``study.run.study_lock``): a second run of the name, or a resume, exits 2 meanwhile.
    """
    name = name or spec.name
    check_study_name(name, "--name")
    root = storage_root(storage)
    state_path = state_file(root, name)
    with hold_study_lock(lock_folder(root, name), name, "moe-study run"):
        return _run_new(spec, name, root, state_path, tracking_uri=tracking_uri, address=address,
                        on_success=on_success, verbose=verbose)


def lock_folder(root: str, name: str) -> Path:
    """Where the study's lock file lives: its folder on local storage; on remote storage (no
    locks on an object store) a folder of this machine's cache for that root, so two drivers on
    one machine still exclude each other (two machines on one bucket do not: docs/faults.md)."""
    if not study_storage.is_uri(root):
        return Path(root) / name
    from trainables.data.cache import default_cache_root

    digest = hashlib.sha256(root.encode()).hexdigest()[:16]
    return default_cache_root() / "study-locks" / digest / name


def _run_new(spec: StudySpec, name: str, root: str, state_path: StorageFile, *, tracking_uri: str,
             address: str | None, on_success: OnSuccess | None, verbose: bool) -> int:
    if state_path.exists():
        raise ConfigError(f"--name {name}: a study of that name exists in {root}; "
                          f"continue it with `moe-study resume {name}` or pick another --name")
    base = spec_base_config(spec)
    if address is None:
        check_resources(spec, local_resources(count_gpus=spec.resources.per_trial()["GPU"] > 0))
    else:  # before the experiment, the parent run or the state exist
        check_cluster_resources(spec, address)
    started_at = time.monotonic()
    ray_session, state = _prepared_beside_ray(spec, address, verbose, _prepare_new, spec, name, root,
                                              state_path, tracking_uri, base)
    return _execute(spec, state, state_path, address=address, restore=False, on_success=on_success,
                    verbose=verbose, ray_session=ray_session, started_at=started_at)


def _prepare_new(spec: StudySpec, name: str, root: str, state_path: StorageFile, tracking_uri: str,
                 base: TrialConfig) -> dict:
    """Check the tracking store, build (or check) the data mix, open the MLflow experiment and
    parent run and the Optuna copy, write the study's state: the state."""
    check_tracking(tracking_uri)
    mix_hash = _build_data_once(base)

    from study.run import mlflow_layout, optuna_store

    optuna_url = optuna_store.storage_url(lock_folder(root, name))
    optuna_name = optuna_store.free_study_name(optuna_url, name)
    experiment_id = mlflow_layout.ensure_experiment(
        tracking_uri, spec.experiment_name if spec.tracking.experiment else name, spec.description)
    parent_run_id = mlflow_layout.start_parent_run(
        tracking_uri, experiment_id, name, spec.to_dict(),
        tags={naming.TAG_SPEC_HASH: spec.content_hash(),
              **({naming.TAG_REFERENCE_KEY: spec.reference_key()} if spec.reference.enabled else {}),
              naming.TAG_SEARCH_KEYS: ",".join(spec.search_keys),
              naming.TAG_MIX_HASH: mix_hash,
              naming.TAG_OPTUNA_STORAGE: optuna_url, naming.TAG_OPTUNA_STUDY: optuna_name},
    )
    mlflow_layout.set_study_view(tracking_uri, experiment_id, name, parent_run_id, spec.search_keys,
                                 spec.objective.metrics, spec.objective.modes)
    optuna_store.create_study(optuna_url, optuna_name, spec.objective.modes, {
        "mlflow_experiment_id": experiment_id, "mlflow_parent_run_id": parent_run_id})
    state = {
        "name": name, "spec": spec.to_dict(), "tracking_uri": tracking_uri,
        "experiment_id": experiment_id, "parent_run_id": parent_run_id, "storage": root,
        "reference": None, "optuna": {"storage": optuna_url, "study": optuna_name},
    }
    _write_state(state_path, state)
    print(f"[{name}] MLflow experiment {experiment_id}, parent run {parent_run_id}; Optuna study "
          f"{optuna_name}: optuna-dashboard {optuna_url}", flush=True)
    return state


def _prepared_beside_ray(spec: StudySpec, address: str | None, verbose: bool,
                         prepare: Callable[..., Any], *args: Any) -> tuple[contextlib.ExitStack, Any]:
    """``prepare(*args)`` in a thread while Ray starts in this one: the Ray session and what
    ``prepare`` returned; Ray is left again if ``prepare`` fails.

    Starting Ray is mostly waiting for Ray's own processes, on the other cores, so the study's
    tracking store, data mix and MLflow writes are done meanwhile. Ray itself starts in the main
    thread: the processes it starts die with the thread that started them, and its driver's
    SIGTERM handler is only installed there."""
    preparing = _Background(prepare, *args)
    try:
        ray_session = _start_ray(spec, address, verbose)
    except BaseException as ray_error:
        preparing.wait()  # its writes end before the error is told
        if preparing.error is not None and not isinstance(ray_error, KeyboardInterrupt):
            # the preparation's check (tracking unreachable, a bad state) is the one to tell,
            # as when it ran before Ray
            raise preparing.error from ray_error
        raise
    try:
        return ray_session, preparing.result()
    except BaseException:
        ray_session.close()
        raise


class _Background:
    """A function run in a daemon thread of the driver, its value or error kept for the thread
    that waits for it. ``wait()`` and ``result()`` join a short timeout at a time, so Ctrl-C
    still reaches the main thread."""

    def __init__(self, fn: Callable[..., Any], *args: Any, thread_name: str | None = None, **kwargs: Any):
        self._outcome: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True,
                                        name=thread_name or f"moe-study-{fn.__name__.strip('_')}")
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        try:
            self._outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread by outcome()
            self._outcome["error"] = exc

    @property
    def ended(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> None:
        while self._thread.is_alive():
            self._thread.join(0.5)

    @property
    def error(self) -> BaseException | None:
        """What the function raised, once it has ended (None if it returned)."""
        return self._outcome.get("error")

    def outcome(self) -> Any:
        """Once it has ended: what the function returned, or raise what it raised."""
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["value"]

    def result(self) -> Any:
        """Wait, then ``outcome()``; after a Ctrl-C, wait for the function to end before the
        interrupt goes on (no write of it goes on behind an interrupted study's back)."""
        try:
            self.wait()
        except KeyboardInterrupt:
            self._thread.join()
            raise
        return self.outcome()


def _start_ray(spec: StudySpec, address: str | None, verbose: bool) -> contextlib.ExitStack:
    """Start a local Ray, join the cluster at ``address`` or keep the caller's Ray; closing the
    returned stack leaves again (a Ray this process did not start stays up)."""
    import ray

    from study.run.console import quiet_libraries

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    quiet_libraries(verbose)
    session = contextlib.ExitStack()
    if ray.is_initialized():
        return session  # the caller's Ray: it stays up
    if address is not None:
        ray.init(address=address, log_to_driver=verbose, configure_logging=False)  # join a cluster
        session.callback(ray.shutdown)
    else:
        # data-parallel trials need the dashboard: Ray Train frees a dead trial's workers
        # through a cleanup actor that uses it (on loopback like the rest)
        session.enter_context(local_ray(
            include_dashboard=None if spec.resources.workers > 1 else False,
            log_to_driver=verbose, configure_logging=False))
    return session


def resume_study(name: str, *, tracking_uri: str | None = None, address: str | None = None,
                 storage: str | None = None, on_success: OnSuccess | None = None,
                 verbose: bool = False) -> int:
    check_study_name(name, "NAME")
    root = storage_root(storage)
    state_path = state_file(root, name)
    if not state_path.exists():
        stored = stored_study_names(root)
        known = (f"; the studies there: {', '.join(stored[:20])}{' ...' if len(stored) > 20 else ''}"
                 if stored else "; no study is stored there (--storage, $MOE_STUDY_STORAGE)")
        raise ConfigError(f"NAME {name}: no study of that name in {root} (looked for {state_path})"
                          f"{did_you_mean(name, stored, otherwise=known)}")
    with hold_study_lock(lock_folder(root, name), name, "moe-study resume",
                         create=study_storage.is_uri(root)):
        return _resume(name, root, state_path, tracking_uri=tracking_uri, address=address,
                       on_success=on_success, verbose=verbose)


def _resume(name: str, root: str, state_path: StorageFile, *, tracking_uri: str | None,
            address: str | None, on_success: OnSuccess | None, verbose: bool) -> int:
    state = read_state(state_path, name)
    if state["storage"] != root:
        # the study is where its state was found: a folder moved or mounted elsewhere, an S3
        # endpoint reached by another address from this machine. Its spool, Tune's experiment
        # and the checkpoints are beside the state, not at the address the run recorded.
        print(f"[{name}] note: the study ran with storage {state['storage']}; it continues in "
              f"{root}, where its state is", flush=True)
        state["storage"] = root
    spec = spec_from_dict(state["spec"], default_name=name)
    if tracking_uri and tracking_uri != state["tracking_uri"]:
        print(f"[{name}] note: the study tracks to {state['tracking_uri']}; ignoring {tracking_uri}")
    started_at = time.monotonic()
    ray_session, _ = _prepared_beside_ray(spec, address, verbose, _prepare_resume, name, state)
    return _execute(spec, state, state_path, address=address, restore=True, on_success=on_success,
                    verbose=verbose, ray_session=ray_session, started_at=started_at)


def _prepare_resume(name: str, state: dict) -> None:
    """Check the tracking store, deliver what an earlier driver spooled, mark the parent run
    RUNNING again."""
    check_tracking(state["tracking_uri"])
    from mlflow.tracking import MlflowClient

    from study.run.tracking import StudyTracker

    replay = StudyTracker(  # writes an earlier driver could not deliver
        tracking_uri=state["tracking_uri"], experiment_id=state["experiment_id"],
        parent_run_id=state["parent_run_id"], study_name=name, spool_path=_spool(state),
    ).queue
    delivered = replay.replay_spool()  # the number that reached MLflow, not the number tried
    if delivered:
        print(f"[{name}] delivered {delivered} spooled MLflow writes", flush=True)
    if replay.rejected:
        print(f"[{name}] MLflow refused {replay.rejected} spooled writes; they are set aside in "
              f"{replay.rejected_path}", flush=True)
    if _spool(state).exists():
        print(f"[{name}] MLflow failed during the replay: the writes not yet delivered stay in "
              f"{_spool(state)}", flush=True)
    MlflowClient(state["tracking_uri"]).update_run(state["parent_run_id"], status="RUNNING")


def _execute(spec: StudySpec, state: dict, state_path: StorageFile, *, address: str | None, restore: bool,
             on_success: OnSuccess | None = None, verbose: bool = False,
             ray_session: contextlib.ExitStack, started_at: float) -> int:
    """The study's Ray part, on ``ray_session`` (``_prepared_beside_ray``); its duration counts
    from ``started_at``."""
    import ray
    from mlflow.tracking import MlflowClient

    from study.run.console import duration

    _fail_tracking_requests_fast()
    name = state["name"]
    client = MlflowClient(state["tracking_uri"])
    status, code = "FAILED", 1
    beside = None  # the reference's run beside the search, when it has one
    try:
        if address is not None and restore:  # a new study was checked before its first write
            check_cluster_resources(spec, address)
        available = ray.cluster_resources()
        reference = _known_reference(spec, state, state_path)
        if spec.reference.enabled and reference is None:
            beside = _reference_beside(spec, state)
            beside.wait_started(REFERENCE_START_WAIT_S)
        grid, interrupted = _search(spec, state, available, reference or {}, restore=restore)
        if beside is not None:
            reference = _end_reference_beside(beside, state, state_path, stop=interrupted)
        if reference and not _spool(state).exists():
            _fill_gaps(state, reference)
        if interrupted:
            print(f"[{name}] interrupted; continue with: moe-study resume {name}", flush=True)
            status, code = "KILLED", EXIT_INTERRUPTED
        else:
            errors = grid.num_errors
            status, code = "FINISHED", 0
            print(f"[{name}] finished in {duration(time.monotonic() - started_at)}: "
                  f"{len(grid) - errors} trials done, {errors} failed", flush=True)
        if _spool(state).exists():
            print(f"[{name}] MLflow was unreachable at the end: undelivered writes are kept in "
                  f"{_spool(state)}; deliver them with: moe-study resume {name}", flush=True)
            status, code = "RUNNING", 1
    except KeyboardInterrupt:
        print(f"[{name}] interrupted; continue with: moe-study resume {name}", flush=True)
        status, code = "KILLED", EXIT_INTERRUPTED
    finally:
        if beside is not None and not beside.ended:  # interrupted, or the search failed
            with contextlib.suppress(Exception):  # the search's error is the one to tell
                _end_reference_beside(beside, state, state_path, stop=True)
        ray_session.close()
        if status != "RUNNING":  # RUNNING: tracking is down, resume closes the runs later
            try:
                # a child still RUNNING here did not complete (interrupted, or cut by the
                # study's time budget): never FINISHED, so no report ranks it as full-length
                _close_open_children(client, state, "KILLED")
                from study.run.mlflow_layout import log_study_outcome

                log_study_outcome(state["tracking_uri"], state["experiment_id"], state["parent_run_id"],
                                  spec.objective.metrics[0], spec.objective.modes[0],
                                  time.monotonic() - started_at)
                client.set_terminated(state["parent_run_id"], status=status)
            except Exception as exc:  # noqa: BLE001 - tracking down: nothing is lost, say so
                print(f"[{name}] could not close the MLflow runs ({exc}); "
                      f"`moe-study resume {name}` does it later", flush=True)
                code = code or 1
    if code == 0 and on_success is not None:
        on_success(name, state["tracking_uri"], spec.tracking.experiment or name, spec.objective.metrics[0])
    return code


def _known_reference(spec: StudySpec, state: dict, state_path: StorageFile) -> dict | None:
    """The reference's metrics when they can be known before the search: kept in the study's
    state, reused from MLflow, or (when trials need them) from a reference run now."""
    from study.run import reference as study_reference

    known = state.get("reference")
    if not spec.reference.enabled or known is not None:
        return known
    known = study_reference.reused_reference(spec, state)
    if known is None and spec.trials_need_reference:
        known = study_reference.run_reference(spec, state)
    if known is not None:
        state["reference"] = known
        _write_state(state_path, state)
    return known


def _reference_beside(spec: StudySpec, state: dict):
    """Start the reference beside the search (``ReferenceBeside``)."""
    from study.run.reference import ReferenceBeside

    print(f"[{state['name']}] the reference router runs beside the first trials; their gaps to it "
          f"are written to MLflow when it has finished", flush=True)
    return ReferenceBeside(spec, state)


def _end_reference_beside(beside, state: dict, state_path: StorageFile, *, stop: bool) -> dict | None:
    """Wait for the reference beside the search (stopping it first if ``stop``: an unfinished
    reference runs again on resume), keep its metrics in the study's state, give them."""
    if stop:
        beside.stop()
    reference = beside.join()
    if reference is not None:
        state["reference"] = reference
        _write_state(state_path, state)
    else:
        print(f"[{state['name']}] the reference router was stopped before its end; the resume "
              f"runs it again", flush=True)
    return reference


def _fill_gaps(state: dict, reference: dict) -> None:
    """Gaps to the reference for the trial runs that ran without it (idempotent)."""
    from study.run.reference import fill_gaps

    try:
        filled = fill_gaps(state["tracking_uri"], state["experiment_id"], state["parent_run_id"], reference)
    except Exception as exc:  # noqa: BLE001 - tracking down: the next resume fills them
        print(f"[{state['name']}] could not write the gaps to the reference ({exc}); "
              f"`moe-study resume {state['name']}` writes them later", flush=True)
        return
    if filled:
        print(f"[{state['name']}] gaps to the reference written for {filled} trials", flush=True)


def spec_base_config(spec: StudySpec) -> TrialConfig:
    """The fixed part of every trial (searched keys at their defaults, so not validated alone:
    ``load_spec`` has validated every trial the spec can produce)."""
    return spec.base_config()


def _search(spec: StudySpec, state: dict, available: dict, reference: dict, *, restore: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from study.run.checkpoint_repair import repair_missing_checkpoints
    from study.spec.space import define_by_run, make_sampler
    from study.run.console import StudyConsole, tune_trial_name
    from study.run.tracking import StudyTracker
    from study.run.trial import trial_function

    storage_path, storage_filesystem = study_storage.tune_location(state["storage"], state["name"])
    path = study_storage.tune_location(state["storage"], state["name"], SEARCH_DIR)[0]
    trainable = _with_resources(trial_function, spec)
    if restore and tune.Tuner.can_restore(path, storage_filesystem=storage_filesystem):
        for fix in repair_missing_checkpoints(path, storage_filesystem):
            print(f"[{state['name']}] checkpoint {os.path.basename(fix.missing)} of "
                  f"{fix.trial_dir.name} was gone (ray-project/ray#27790): "
                  + (f"resuming from {os.path.basename(fix.moved_from)}" if fix.moved_from
                     else "no other checkpoint, the trial cannot resume"), flush=True)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                   storage_filesystem=storage_filesystem)
        return fit_noting_interrupt(tuner)
    metrics, modes = spec.search_metrics, spec.objective.modes
    multi = len(metrics) > 1
    searcher = OptunaSearch(
        space=define_by_run(spec),
        metric=metrics if multi else metrics[0],
        mode=modes if multi else modes[0],
        sampler=make_sampler(spec),
    )
    if spec.scheduler.type == "asha":
        if not spec.scheduler.grace_period:  # a spec that skipped validation
            spec.scheduler.grace_period = max(1, spec_base_config(spec).train.steps // 4)
        scheduler = ASHAScheduler(
            time_attr=naming.STEP, metric=spec.scheduler_metric, mode=spec.scheduler_mode,
            max_t=spec.max_steps(),
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    tracker = StudyTracker(
        tracking_uri=state["tracking_uri"], experiment_id=state["experiment_id"],
        parent_run_id=state["parent_run_id"], study_name=state["name"],
        role=naming.ROLE_TRIAL, spool_path=_spool(state),
    )
    console = StudyConsole(study_name=state["name"], total=spec.num_trials, steps=spec.max_steps(),
                           objective=spec.objective.metrics[0], mode=modes[0],
                           concurrency=max_concurrent(spec, available))
    recorders = [tracker]
    if state.get("optuna"):  # a study started before the Optuna copy existed has none
        from study.run.optuna_store import OptunaCopy
        from study.run.tracking import OptunaRecorder
        from study.spec.space import optuna_distributions

        copy = OptunaCopy(state["optuna"]["storage"], state["optuna"]["study"],
                          spec.objective.to_dict(), optuna_distributions(spec))
        recorders.append(OptunaRecorder(copy, state["name"]))
    context = trial_context(spec, reference=reference, objective=spec.objective.to_dict(),
                            search_keys=tuple(spec.search_keys), eval_steps=tuple(spec.asha_rungs() or ()))
    tuner = tune.Tuner(
        trainable,
        param_space=context.tune_config(),
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=spec.num_trials,
            max_concurrent_trials=max_concurrent(spec, available),
            time_budget_s=spec.budget.time_s,
            # a stopped data-parallel trial's Train workers cannot be reset for reuse
            reuse_actors=spec.resources.workers == 1,
            trial_name_creator=tune_trial_name, trial_dirname_creator=tune_trial_name,
        ),
        run_config=tune.RunConfig(
            name=SEARCH_DIR, storage_path=storage_path, storage_filesystem=storage_filesystem,
            callbacks=[*recorders, console, *_result_loggers()], verbose=0,
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    return fit_noting_interrupt(tuner)


def _result_loggers() -> list:
    """Tune's JSON and CSV result files in each trial's folder (its TensorBoard logger, a
    default too, is left out: ``console.quiet_libraries``)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def fit_noting_interrupt(tuner) -> tuple[Any, bool]:
    """``tuner.fit()``, and whether Ctrl-C ended it.

    Tune catches SIGINT itself (it stops the trials and saves the experiment state, so the study
    can be resumed) and returns normally; its handler puts back the handler it replaced when the
    signal arrives. Installing a sentinel first is how we learn that it did.
    """
    import signal

    def sentinel(signum, frame):  # a second Ctrl-C after Tune's: stop now
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, sentinel)
    try:
        grid = tuner.fit()
        return grid, signal.getsignal(signal.SIGINT) is sentinel
    finally:
        signal.signal(signal.SIGINT, previous)


def _with_resources(fn, spec: StudySpec):
    from ray import tune

    r = spec.resources
    if r.workers > 1:
        # Train inside Tune: the trial is only the Train driver; the TorchTrainer's ScalingConfig
        # reserves the workers (study.run.trial, from the trial context's worker fields)
        from study.run.trial import DRIVER_RESOURCES

        return tune.with_resources(fn, DRIVER_RESOURCES)
    return tune.with_resources(fn, {"cpu": r.cpu, "gpu": r.gpu})


def trial_context(spec: StudySpec, **fields) -> TrialContext:
    """The study's context of its trials: data-parallel workers per trial and each worker's
    share, plus ``fields``."""
    r = spec.resources
    return TrialContext(workers=r.workers, cpu_per_worker=r.cpu, gpu_per_worker=r.gpu, **fields)


def _build_data_once(cfg: TrialConfig) -> str:
    """Build (or check) the mix in the driver so trials only read the cache; its content hash."""
    from trainables.data import build_mix

    return build_mix(cfg.data).content_hash


def _spool(state: dict) -> StorageFile:
    return StorageFile(state["storage"], f"{state['name']}/mlflow-spool.jsonl")


STATE_FIELDS = {"name": str, "spec": dict, "tracking_uri": str, "experiment_id": str,
                "parent_run_id": str, "storage": str}


def read_state(path: StorageFile, name: str) -> dict:
    """A study's ``study.json``; ConfigError naming the file when it cannot be the state of study
    ``name`` (not JSON, a field missing or of the wrong type, another study's name)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"NAME {name}: the study state {path} cannot be read ({type(err).__name__}: "
                          f"{brief(str(err))}); it is written by `moe-study run`") from None
    if not isinstance(state, dict):
        raise ConfigError(f"NAME {name}: the study state {path} is not a JSON object")
    problems = [f"{key} must be a {kind.__name__} (got {brief(state.get(key))})"
                for key, kind in STATE_FIELDS.items() if not isinstance(state.get(key), kind)]
    if not isinstance(state.get("reference"), (dict, type(None))):
        problems.append(f"reference must be an object or null (got {brief(state.get('reference'))})")
    if not problems and state["name"] != name:
        problems.append(f"it names study {brief(state['name'])}, not {name!r}")
    if problems:
        raise ConfigError([f"NAME {name}: the study state {path}: {p}" for p in problems])
    return state


def _write_state(path: StorageFile, state: dict) -> None:
    # atomic: a killed driver leaves the old or the new state, never half
    path.write_text(json.dumps(state, indent=2, default=str))


def _close_open_children(client, state: dict, status: str) -> None:
    runs = client.search_runs(
        [state["experiment_id"]],
        filter_string=f"tags.{naming.TAG_PARENT_RUN} = {naming.filter_literal(state['parent_run_id'])} "
        "AND attributes.status = 'RUNNING'",
        max_results=1000,
    )
    for run in runs:
        client.set_tag(run.info.run_id, naming.TAG_STOPPED_EARLY, "true")
        client.set_terminated(run.info.run_id, status=status)
