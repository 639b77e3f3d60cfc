"""What is installed is what the lock pins: a newer rq or redis-py slipped in by hand (or an
unpinned install) fails here by name, instead of as a stall in some other test."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.markers import Marker

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements-dev.lock"
RUNTIME_LOCK = ROOT / "requirements.lock"
PIN = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]*)==(?P<version>\S+)(?: ; (?P<marker>[^\\]+?))?"
                 r" *\\?$")


def locked(lock: Path = LOCK) -> dict[str, str]:
    """Package name -> pinned version, for the pins whose markers apply here."""
    pins = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match and (match["marker"] is None or Marker(match["marker"]).evaluate()):
            pins[match["name"]] = match["version"]
    return pins


def test_the_lock_pins_what_betstream_relies_on_in_detail() -> None:
    pins = locked()
    assert {"rq", "redis", "starlette", "uvicorn", "hiredis", "pytest"} <= set(pins)


@pytest.mark.parametrize("name", ["rq", "redis"])
def test_the_installed_queue_and_redis_clients_are_the_locked_ones(name: str) -> None:
    assert version(name) == locked()[name], (
        f"{name} {version(name)} is installed but the lock pins {locked()[name]}: "
        "run `make test` (it rebuilds .venv from the lock) or `make lock` to upgrade")


def test_every_locked_package_is_installed_at_its_pinned_version() -> None:
    drift = {}
    for name, pinned in locked().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "missing"
        if installed != pinned:
            drift[name] = f"{installed} (lock: {pinned})"
    assert drift == {}, f"installed packages differ from requirements-dev.lock: {drift}"


def test_the_runtime_lock_is_the_suites_versions_and_the_image_installs_it() -> None:
    runtime = locked(RUNTIME_LOCK)
    assert {"redis", "starlette", "uvicorn"} <= set(runtime)
    assert not {"pytest", "rq"} & set(runtime), "test and benchmark tools stay out of the image"
    assert {name: locked()[name] for name in runtime} == runtime, \
        "the image would run other versions than the suite tested: run make lock"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes --no-deps -r requirements.lock" in dockerfile
