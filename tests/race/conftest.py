"""Fixtures of the race's tests: the fake boot catalog (fakeboot.py) and one embedded Ray
per test session, started by the race's own RayExecutor (so its local-mode settings are
exercised) with HOME pointed at a temporary folder (no ~/.ray/auth_token may appear)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fakeboot  # noqa: E402
from race_helpers import _Session  # noqa: E402


@pytest.fixture
def catalog():
    return fakeboot.catalog()


@pytest.fixture
def fake_installed(monkeypatch):
    """`Catalog.installed()` (what the CLI uses) answers with the fake catalog."""
    from race import spec
    monkeypatch.setattr(spec.Catalog, "installed", classmethod(lambda cls: fakeboot.catalog()))
    return fakeboot.catalog()


@pytest.fixture(scope="session")
def _ray_home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def ray_local(_ray_home):
    """The shared embedded Ray (started once; again after the cluster tests shut it)."""
    import ray
    from ray import cloudpickle
    from race.runner import RayExecutor
    cloudpickle.register_pickle_by_value(fakeboot)
    if not ray.is_initialized():
        old = os.environ.get("HOME")
        os.environ["HOME"] = str(_ray_home)
        try:
            ex = RayExecutor(num_cpus=2)
            ex.__enter__()
        finally:
            os.environ["HOME"] = old
        _Session.executor, _Session.home = ex, _ray_home
    yield ray


def pytest_sessionfinish(session, exitstatus):
    if _Session.executor is not None:
        _Session.executor.__exit__(None, None, None)
