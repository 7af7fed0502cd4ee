"""``make run``: the sandbox, the API and a worker, fed the bundled sample, with a summary."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis

from app.cli.sample import Sample, generate
from app.config.destinations import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "destinations.json"
SAMPLE_FILE = ROOT / "examples" / "sample-profiles.ndjson"
DEST = "demo"
DEMO_TOKEN = "demo-token"
SANDBOX_PORT = int(os.environ.get("DEMO_SANDBOX_PORT", "8099"))
API_PORT = int(os.environ.get("DEMO_API_PORT", "8080"))
#: The bundled sample's shape: examples/sample-profiles.ndjson is exactly this (a test checks).
SAMPLE_EVENTS = 3000
SAMPLE_PROSPECTS = 400
SAMPLE_SEED = 7


def demo_sample(events: int = SAMPLE_EVENTS) -> Sample:
    os.environ.setdefault("OUTREACH_SYNC_DEMO_TOKEN", DEMO_TOKEN)
    dest = load_config(CONFIG).destination(DEST)
    return generate(
        events=events,
        prospects=SAMPLE_PROSPECTS,
        audiences=dest.audiences,
        attributes=tuple(dest.attributes),
        seed=SAMPLE_SEED,
    )


def _http(
    url: str, data: bytes | None = None, ctype: str = "application/json", *, key: str = ""
) -> Any:
    headers = {"Content-Type": ctype, **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _wait_http(url: str, proc: subprocess.Popen[bytes], name: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}; see its output above")
        try:
            _http(url)
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer at {url} within {timeout_s:.0f} s")


def _env() -> dict[str, str]:
    sandbox = f"http://127.0.0.1:{SANDBOX_PORT}"
    env = dict(os.environ)
    env.setdefault("REDIS_KEY_PREFIX", "demo")
    # The summary is what the demo is for: no access log lines through the progress bar.
    env.setdefault("LOG_LEVEL", "WARNING")
    env.update(
        OUTREACH_API_URL=f"{sandbox}/api/v2",
        OUTREACH_AUTHORIZE_URL=f"{sandbox}/oauth/authorize",
        OUTREACH_TOKEN_URL=f"{sandbox}/oauth/token",
        OUTREACH_SYNC_DEMO_TOKEN=DEMO_TOKEN,
        API_PORT=str(API_PORT),
    )
    return env


def _clear_prefix(env: dict[str, str]) -> None:
    client = redis.Redis.from_url(env.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    for key in client.scan_iter(match=f"{env['REDIS_KEY_PREFIX']}:*", count=1000):
        client.delete(key)


#: Seconds each service has to stop after SIGTERM before it is killed (a Celery worker
#: finishing its drain); a second Ctrl-C kills at once.
STOP_GRACE_S = 5


def _start(env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    py = sys.executable
    sandbox = ["--port", str(SANDBOX_PORT), "--static-token", f"{DEMO_TOKEN}=demo-user"]
    worker = ["-q", "-A", "workers.celery_app", "worker", "-c", "2", "--loglevel", "WARNING"]
    cmds = [
        [py, "-m", "app.sandbox", *sandbox],
        [py, "-m", "app", "api"],
        [py, "-m", "celery", *worker, "-n", f"demo-{os.getpid()}@%h"],
    ]
    # Each service in its own process group: the terminal's Ctrl-C reaches only the demo, which
    # stops them in order, and a group is killed whole (a Celery worker's pool included).
    return [subprocess.Popen(c, env=env, cwd=ROOT, start_new_session=True) for c in cmds]


class _Stop(BaseException):
    """SIGTERM, raised like SIGINT's KeyboardInterrupt wherever the demo is."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def _kill_groups(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every service's group and wait; a second Ctrl-C (or SIGTERM) kills them now."""

    def kill_now(_signum: int, _frame: object) -> None:
        _kill_groups(procs)

    signal.signal(signal.SIGINT, kill_now)
    signal.signal(signal.SIGTERM, kill_now)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    _kill_groups(procs)  # what is left of each group (a worker's pool processes) goes too
    for proc in procs:
        proc.wait()


def _producer_key(env: dict[str, str]) -> str:
    """A producer API key for the demo destination: ingestion always needs one."""
    cmd = [sys.executable, "-m", "app", "keys", "create", "--name", "demo", "-d", DEST]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def _feed(api: str, key: str) -> dict[str, int]:
    from tqdm import tqdm

    totals = {"accepted": 0, "excluded": 0, "rejected": 0}
    lines = SAMPLE_FILE.read_text().splitlines()
    with tqdm(total=len(lines), unit=" events", desc="sending  ") as bar:
        for i in range(0, len(lines), 250):
            chunk = "\n".join(lines[i : i + 250]).encode()
            try:
                url = f"{api}/v1/destinations/{DEST}/profiles"
                doc = _http(url, chunk, "application/x-ndjson", key=key)
            except urllib.error.HTTPError as exc:
                doc = json.loads(exc.read())
            for k in totals:
                totals[k] += doc.get(k, 0)
            bar.update(len(lines[i : i + 250]))
    return totals


def _wait_delivered(api: str, sandbox: str, expected: int, key: str) -> None:
    from tqdm import tqdm

    with tqdm(total=expected, unit=" prospects", desc="delivering") as bar:
        while True:
            st = _http(f"{api}/v1/destinations/{DEST}/status", key=key)
            done = len(_http(f"{sandbox}/_sandbox/prospects"))
            bar.update(done - bar.n)
            if st["pending"] == 0 and st["in_flight"] == 0 and done >= expected:
                return
            time.sleep(0.3)


def run_demo(*, keep_serving: bool) -> int:
    env = _env()
    os.environ.update(env)
    _clear_prefix(env)
    sample = demo_sample()
    # Ctrl-C stops the demo even when it was started with SIGINT ignored (as a shell does for
    # a command run with `&`): Python then leaves SIGINT ignored rather than raising.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_stop)
    procs = _start(env)
    sandbox, api = f"http://127.0.0.1:{SANDBOX_PORT}", f"http://127.0.0.1:{API_PORT}"
    try:
        _wait_http(f"{sandbox}/_sandbox/stats", procs[0], "the sandbox")
        _wait_http(f"{api}/healthz", procs[1], "the API")
        subprocess.run(
            [sys.executable, "-m", "app", "config", "load", str(CONFIG)], env=env, check=True
        )
        key = _producer_key(env)
        totals = _feed(api, key)
        expected = sample.expected()
        _wait_delivered(api, sandbox, len(expected), key)
        _summary(
            totals,
            sample,
            _http(f"{sandbox}/_sandbox/stats"),
            _http(f"{sandbox}/_sandbox/prospects"),
        )
        print(f"\nsandbox:  {sandbox}/_sandbox/stats   {sandbox}/_sandbox/prospects")
        dest_url = f"{api}/v1/destinations/{DEST}"
        print(f"API:      POST {dest_url}/profiles   GET {dest_url}/status")
        print(f"          with 'Authorization: Bearer {key}' (the demo's producer key)")
        print(f"          {api}/openapi.json describes every route")
        print(f"status:   {api}/status/{DEST} (page)   {api}/metrics (Prometheus)")
        print("          outreach-sync status (table; REDIS_KEY_PREFIX=demo)")
        print("flower:   make flower (http://127.0.0.1:5555)")
        if keep_serving:
            print("serving; Ctrl-C stops everything", flush=True)
            while True:
                time.sleep(3600)  # until Ctrl-C (KeyboardInterrupt) or SIGTERM (_Stop)
        return 0
    except (KeyboardInterrupt, _Stop):
        print("\nstopping…", flush=True)
        return 130
    finally:
        _stop(procs)


def _summary(
    totals: dict[str, int], sample: Sample, stats: dict[str, Any], state: dict[str, Any]
) -> None:
    expected = sample.expected()
    wrong = [p for p, fields in expected.items() if _differs(state.get(str(p), {}), fields)]
    print("\nsummary")
    print(f"  events sent          {len(sample.profiles)}")
    accepted, excluded, rejected = totals["accepted"], totals["excluded"], totals["rejected"]
    print(f"  accepted / excluded  {accepted} / {excluded}   rejected {rejected}")
    print(f"  prospects updated    {len(state)}")
    print(
        f"  requests spent       {stats['requests']}  (one per event would be {totals['accepted']})"
    )
    print(
        f"  final state          {len(expected) - len(wrong)}/{len(expected)} prospects as expected"
    )


def _differs(actual: dict[str, Any], expected: dict[str, Any]) -> bool:
    return any(actual.get(k) != v for k, v in expected.items())
