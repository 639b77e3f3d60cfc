"""The ways operators start betstream: `make run`'s demo, honcho with the Procfile, compose."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from rich.console import Console

from producer.contract import new_deposit
from tests.conftest import BETSTREAM, ROOT, free_port, wait_for
from tests.support import confirmations, drained, outcome_of
from workers.ops.demo_run import REDIS_SERVER_TUNING, ensure_redis


def test_run_demo_starts_private_redis_and_prints_a_summary(tmp_path: Path,
                                                            env: dict[str, str]) -> None:
    """`make run` on a machine where no Redis answers: it starts one, demo, summary, exit."""
    port = free_port()
    demo_env = {**env, "BETSTREAM_REDIS_URL": f"redis://127.0.0.1:{port}/0",
                "BETSTREAM_GATEWAY_PORT": str(free_port()),
                "BETSTREAM_DB": "var/betstream.sqlite3", "BETSTREAM_KEYRING": "var/keyring.json"}
    done = subprocess.run([*BETSTREAM, "run", "--exit-after-demo", "--users", "5",
                           "--bets", "300"], cwd=tmp_path, env=demo_env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "started a private redis-server" in done.stdout
    assert "demo done" in done.stdout and "accepted" in done.stdout
    assert "bet slip    http://127.0.0.1:" in done.stdout and "token (user 1" in done.stdout
    assert (tmp_path / "var" / "betstream.sqlite3").exists()
    assert (tmp_path / "var" / "keyring.json").stat().st_mode & 0o077 == 0, "secret file is private"
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_connect_timeout=1).ping()  # stopped on the way out
    audit = subprocess.run([*BETSTREAM, "audit"], cwd=tmp_path, env=demo_env,
                           capture_output=True, text=True, timeout=60)
    assert audit.returncode == 0, audit.stdout


def test_procfile_runs_writer_confirmer_and_gateway_under_honcho(
        tmp_path: Path, env: dict[str, str], redis_client: redis.Redis, producer) -> None:
    deposit = new_deposit(11, 900)
    producer.submit(deposit)
    bin_dir = str(Path(sys.executable).parent)
    port = free_port()
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "start"], cwd=ROOT,
        env={**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}",
             "BETSTREAM_GATEWAY_PORT": str(port)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: drained(redis_client), 30, "the Procfile writer to drain the stream")
        assert outcome_of(env["BETSTREAM_DB"], deposit.id)["status"] == "accepted"
        wait_for(lambda: [m["id"] for m in confirmations(redis_client)] == [deposit.id], 30,
                 "the Procfile confirmer to publish the outcome")
        wait_for(lambda: _status(f"http://127.0.0.1:{port}/health") == 200, 30,
                 "the Procfile gateway to report healthy")
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        honcho.wait(30)


def test_private_redis_expires_nonce_keys_at_high_effort(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """At Redis's default expiry effort, nonce keys outlived their TTL at 30,000 intents/s
    and the keyspace's next doubling slowed every claim for ~25 s (docs/performance.md)."""
    monkeypatch.chdir(tmp_path)  # the private Redis keeps its files under ./var
    url = f"redis://127.0.0.1:{free_port()}/0"
    proc = ensure_redis(url, Console(quiet=True))
    assert proc is not None, "nothing answered there: it started one"
    try:
        with redis.Redis.from_url(url) as client:
            assert client.config_get("active-expire-effort") == {"active-expire-effort": "10"}
    finally:
        proc.terminate()
        proc.wait(30)


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_compose_runs_redis_with_aof_everysec_and_the_writer() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--appendfsync everysec" in redis_cmd
    assert " ".join(REDIS_SERVER_TUNING) in redis_cmd, "nonce keys expire as fast as they come"
    for name in ("writer", "confirmer", "gateway"):
        assert services[name]["command"][0] == name
        assert services[name]["environment"]["BETSTREAM_REDIS_URL"] == "redis://redis:6379/0"
    gateway = services["gateway"]
    assert gateway["ports"] == ["127.0.0.1:8000:8000"], "the public port only, never 9101"
    assert "--ops-port" in gateway["command"]
    mounts = {name: " ".join(services[name].get("volumes", [])) for name in services}
    assert "keyring" not in mounts["gateway"] and "keyring" not in mounts["confirmer"]
    assert "keyring.json:/config/keyring.json:ro" in mounts["writer"]
    assert "ledger:/data" in mounts["confirmer"], "the confirmer reads the ledger"
    procfile = (ROOT / "Procfile").read_text()
    for line in ("writer: betstream writer", "confirmer: betstream confirmer",
                 "gateway: betstream gateway"):
        assert line in procfile


def test_demo_gateway_refuses_to_listen_beyond_loopback(env: dict[str, str]) -> None:
    """The demo mints tokens for anyone: it must never be reachable from other hosts."""
    done = subprocess.run([*BETSTREAM, "gateway", "--demo", "--host", "0.0.0.0"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "only listens on loopback" in done.stderr


@pytest.mark.parametrize("setting,value,needle", [
    ("BETSTREAM_KEYRING", "/nonexistent/keyring.json", "keyring file not found"),
    ("BETSTREAM_BATCH_SIZE_MAX", "0", "BETSTREAM_BATCH_SIZE_MAX"),
    ("BETSTREAM_INTENT_AGE_MAX_MS", "120000", "nonce_ttl_s"),
])
def test_writer_refuses_bad_settings_with_a_message_not_a_traceback(
        env: dict[str, str], setting: str, value: str, needle: str) -> None:
    done = subprocess.run([*BETSTREAM, "writer"], env={**env, setting: value}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert needle in done.stderr and "Traceback" not in done.stderr


def test_token_prints_one_token_per_user_in_order(procs, env: dict[str, str]) -> None:
    """An operator or a load test minting many: one line per USER_ID, in the order given."""
    from workers.adapters.subscriber_tokens import load_or_create_secret, verify

    run = procs.run("token", "30", "7", "12")
    assert run.returncode == 0, run.stderr
    secret = load_or_create_secret(Path(env["BETSTREAM_GATEWAY_SECRET_FILE"]))
    assert [verify(secret, line) for line in run.stdout.splitlines()] == [30, 7, 12]
    refused = procs.run("token", "5", "0")
    assert refused.returncode != 0 and "positive" in refused.stderr and not refused.stdout
