"""A study's storage as a local folder or a URI (study.run.storage): the state file, the MLflow
spool and the checkpoint repair go through pyarrow filesystems, including one that behaves like
an object store (no append, no folder rename)."""

from __future__ import annotations

import json

import pyarrow.fs as pafs
import pytest

from study.run import storage
from study.run.checkpoint_repair import CHECKPOINT_FILE, newest_checkpoint_dir, repair
from study.run.runner import _spool, state_file, _write_state, storage_root
from study.run.storage import StorageFile, as_storage_file, display, tune_location
from trainables.errors import ConfigError


class ObjectStoreHandler(pafs.FileSystemHandler):
    """A local folder with an object store's limits (as S3 in pyarrow): appending to a file and
    renaming a folder are not supported."""

    def __init__(self, root):
        self.fs = pafs.SubTreeFileSystem(str(root), pafs.LocalFileSystem())

    def __eq__(self, other):
        return isinstance(other, ObjectStoreHandler) and other.fs.equals(self.fs)

    def __ne__(self, other):
        return not self == other

    def get_type_name(self):
        return "objectstore-test"

    def normalize_path(self, path):
        return path

    def equals(self, other):
        return self == other

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.fs.delete_dir_contents("", accept_root_dir=True)

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        if self.fs.get_file_info(src).type == pafs.FileType.Directory:
            raise NotImplementedError("an object store cannot rename a folder")
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        raise NotImplementedError("an object store cannot append")


@pytest.fixture
def object_store(tmp_path, monkeypatch):
    """The storage root ``objstore://bucket/prefix``, kept in ``tmp_path/bucket/prefix``."""
    fs = pafs.PyFileSystem(ObjectStoreHandler(tmp_path))
    real = storage.filesystem

    def filesystem(root):
        if root.startswith("objstore://"):
            return fs, root[len("objstore://"):].split("?")[0].rstrip("/")
        return real(root)

    monkeypatch.setattr(storage, "filesystem", filesystem)
    return "objstore://bucket/prefix", fs


def test_a_state_file_on_a_file_uri(tmp_path):
    root = storage_root(f"file://{tmp_path}/runs")
    state = state_file(root, "s1")
    assert str(state) == f"file://{tmp_path}/runs/s1/study.json" and not state.exists()
    _write_state(state, {"name": "s1", "storage": root})
    assert state.exists() and json.loads(state.read_text())["storage"] == root
    assert json.loads((tmp_path / "runs" / "s1" / "study.json").read_text())["name"] == "s1"
    assert not list((tmp_path / "runs" / "s1").glob("*.tmp"))  # written through a temporary name
    path, fs = tune_location(root, "s1")
    assert path == f"{tmp_path}/runs/s1" and isinstance(fs, pafs.LocalFileSystem)


def test_a_local_root_stays_a_path_tune_resolves_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MOE_STUDY_STORAGE", raising=False)
    assert storage_root(None) == str(tmp_path / "runs")
    monkeypatch.setenv("MOE_STUDY_STORAGE", "file:///elsewhere")
    assert storage_root(None) == "file:///elsewhere"
    assert tune_location(str(tmp_path), "s1") == (str(tmp_path / "s1"), None)


def test_an_unknown_storage_scheme_is_bad_input_naming_it():
    with pytest.raises(ConfigError, match=r"--storage nosuch://bucket/x: not a storage pyarrow"):
        storage_root("nosuch://bucket/x")


def test_uri_query_options_stay_at_the_end():
    assert display("s3://b/p?endpoint_override=127.0.0.1:9000", "s1", "study.json") == \
        "s3://b/p/s1/study.json?endpoint_override=127.0.0.1:9000"
    assert display("/abs/runs", "s1") == "/abs/runs/s1"


def test_files_on_an_object_store_are_written_whole(object_store, tmp_path):
    root, _ = object_store
    state = {"name": "s1", "storage": root}
    _write_state(state_file(root, "s1"), state)
    on_disk = tmp_path / "bucket" / "prefix" / "s1" / "study.json"
    assert json.loads(on_disk.read_text()) == state
    spool = _spool(state)
    assert str(spool) == "objstore://bucket/prefix/s1/mlflow-spool.jsonl" and not spool.exists()
    spool.append_text("a\n")
    spool.append_text("b\n")  # no append on an object store: rewritten whole
    assert spool.read_text() == "a\nb\n"
    spool.unlink()
    assert not spool.exists()


def test_the_tracker_spools_to_and_replays_from_an_object_store(object_store):
    from mlflow.tracking import MlflowClient

    from study.run.tracking import _DeliveryQueue

    root, _ = object_store
    spool = StorageFile(root, "s1/mlflow-spool.jsonl")
    down = _DeliveryQueue(MlflowClient("http://127.0.0.1:9"), spool)
    down.pending = [("batch", {"trial": "t", "tags": {"k": "v1"}}), ("batch", {"trial": "t", "tags": {"k": "v2"}})]
    down.spool()
    assert [json.loads(x)["tags"]["k"] for x in spool.read_text().splitlines()] == ["v1", "v2"]
    replayed = []
    up = _DeliveryQueue(None, spool)

    def take_all():  # a tracking server that takes every write
        replayed.extend(up.pending)
        up.delivered += len(up.pending)
        up.pending = []
        return True

    up.flush = take_all
    assert up.replay_spool() == 2 and [kw["tags"]["k"] for _, kw in replayed] == ["v1", "v2"]
    assert not spool.exists()


def test_a_local_spool_path_still_works(tmp_path):
    spool = as_storage_file(tmp_path / "spool.jsonl")
    spool.append_text("x\n")
    assert (tmp_path / "spool.jsonl").read_text() == "x\n" and str(spool) == str(tmp_path / "spool.jsonl")


def test_a_missing_checkpoint_is_put_back_on_an_object_store(object_store, tmp_path):
    root, fs = object_store
    search = "bucket/prefix/s1/search"
    for n, content in ((2, b"step 2"), (3, b"step 3"), (4, b"")):  # 4: cut while written
        fs.create_dir(f"{search}/t/checkpoint_{n:06d}")
        with fs.open_output_stream(f"{search}/t/checkpoint_{n:06d}/{CHECKPOINT_FILE}") as f:
            f.write(content)
    fs.delete_dir(f"{search}/t/checkpoint_000002")  # the one Tune's state names
    assert str(newest_checkpoint_dir(f"{search}/t", fs)) == f"{search}/t/checkpoint_000003"
    [fix] = repair([("RUNNING", f"{search}/t/checkpoint_000002")], search, fs)
    assert fix.moved_from == f"{search}/t/checkpoint_000003"
    moved = tmp_path / search / "t" / "checkpoint_000002" / CHECKPOINT_FILE
    assert moved.read_bytes() == b"step 3"  # copied, since the folder could not be renamed
    assert not (tmp_path / search / "t" / "checkpoint_000003").exists()


# -- the same on S3: moto's S3 server on loopback (tests/conftest.py), through pyarrow's S3
# filesystem as Tune uses it ----------------------------------------------------------------------
@pytest.fixture
def s3_root(s3_bucket):
    endpoint, bucket = s3_bucket
    return f"s3://{bucket}/tune?endpoint_override={endpoint}&scheme=http"


def test_the_state_and_the_spool_live_on_s3(s3_root):
    from study.run.tracking import _DeliveryQueue

    root = storage_root(s3_root)
    state = {"name": "s1", "storage": root}
    path = state_file(root, "s1")
    assert not path.exists()
    _write_state(path, state)
    fs, base = storage.filesystem(root)
    assert base == "moe-study/tune" and fs.type_name == "s3"
    with fs.open_input_stream("moe-study/tune/s1/study.json") as f:
        assert json.loads(f.read()) == state
    spool = _spool(state)
    assert str(spool) == s3_root.replace("/tune?", "/tune/s1/mlflow-spool.jsonl?")
    down = _DeliveryQueue(None, spool)
    down.pending = [("batch", {"trial": "t", "tags": {"k": "v1"}})]
    assert down.spool()
    down.pending = [("batch", {"trial": "t", "tags": {"k": "v2"}})]
    assert down.spool()  # after what is there: S3 has no append, the object is written again
    assert [json.loads(x)["tags"]["k"] for x in spool.read_text().splitlines()] == ["v1", "v2"]
    up = _DeliveryQueue(None, spool)

    def take_all():
        up.delivered += len(up.pending)
        up.pending = []
        return True

    up.flush = take_all
    assert up.replay_spool() == 2 and not spool.exists()
    assert fs.get_file_info("moe-study/tune/s1/mlflow-spool.jsonl").type == pafs.FileType.NotFound


def test_a_missing_checkpoint_is_put_back_on_s3(s3_root):
    fs, base = storage.filesystem(storage_root(s3_root))
    search = f"{base}/s1/search"
    for n, content in ((2, b"step 2"), (3, b"step 3"), (4, b"")):  # 4: cut while written
        with fs.open_output_stream(f"{search}/t/checkpoint_{n:06d}/{CHECKPOINT_FILE}") as f:
            f.write(content)  # as Tune uploads: objects only, the folders are implied
    fs.delete_dir(f"{search}/t/checkpoint_000002")  # the one Tune's state names
    assert str(newest_checkpoint_dir(f"{search}/t", fs)) == f"{search}/t/checkpoint_000003"
    [fix] = repair([("RUNNING", f"{search}/t/checkpoint_000002")], search, fs)
    assert fix.moved_from == f"{search}/t/checkpoint_000003"
    with fs.open_input_stream(f"{search}/t/checkpoint_000002/{CHECKPOINT_FILE}") as f:
        assert f.read() == b"step 3"  # copied: S3 cannot rename a folder
    assert fs.get_file_info(f"{search}/t/checkpoint_000003").type == pafs.FileType.NotFound
    assert str(newest_checkpoint_dir(f"{search}/t", fs)) == f"{search}/t/checkpoint_000002"


def test_a_bucket_that_does_not_exist_is_bad_input(s3_root):
    with pytest.raises(ConfigError, match="the bucket 'no-such-bucket' does not exist"):
        storage_root(s3_root.replace("moe-study", "no-such-bucket"))


def test_credentials_in_the_storage_uri_are_refused_without_repeating_them(s3_root):
    with pytest.raises(ConfigError, match="credentials in the storage URI") as err:
        storage_root(s3_root.replace("s3://", "s3://AKIAEXAMPLE:s3cr3t@"))
    assert "s3cr3t" not in str(err.value) and "AKIAEXAMPLE" not in str(err.value)


def test_a_storage_that_cannot_be_reached_fails_the_study(monkeypatch):
    from study.run.runner import StudyFailed

    def unreachable(root):
        raise OSError("AWS Error NETWORK_CONNECTION during HeadBucket operation")

    monkeypatch.setattr(storage, "check_root", unreachable)
    with pytest.raises(StudyFailed, match="cannot be reached .*NETWORK_CONNECTION"):
        storage_root("s3://b/p")


def test_resume_continues_where_the_state_was_found(tmp_path, monkeypatch, capsys):
    """A study folder moved (or an S3 endpoint reached by another address): the spool, Tune's
    experiment and the checkpoints are beside study.json, not where the run recorded them."""
    from study.run import runner

    _write_state(state_file(str(tmp_path / "moved"), "s1"), {
        "name": "s1", "spec": {}, "tracking_uri": "sqlite:///x.db", "experiment_id": "1",
        "parent_run_id": "p", "storage": "s3://old-bucket/tune?endpoint_override=10.0.0.1:9000",
        "reference": None})
    seen = {}

    class Stop(Exception):
        pass

    def spool_of(state):
        seen.update(state)
        raise Stop

    monkeypatch.setattr(runner, "spec_from_dict", lambda spec, default_name: None)
    monkeypatch.setattr(runner, "check_tracking", lambda uri: None)
    monkeypatch.setattr(runner, "_spool", spool_of)
    with pytest.raises(Stop):
        runner.resume_study("s1", storage=str(tmp_path / "moved"))
    assert seen["storage"] == str(tmp_path / "moved")
    assert "it continues in " + str(tmp_path / "moved") in capsys.readouterr().out
