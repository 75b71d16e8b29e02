"""Fixtures of the reader tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # a reader built without cache_dir= caches in $PCATTN_CACHE: a temporary folder here, never
    # the user's ~/.cache/pcattn
    monkeypatch.setenv("PCATTN_CACHE", str(tmp_path / "user-cache"))
