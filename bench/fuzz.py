"""``make fuzz``: schemathesis over the whole API, bounded, against a production-mode API.

``python -m bench.fuzz [--minutes N] [--seed N]`` starts ``outreach-sync api`` with
``APP_ENV=production`` under a Redis key prefix of its own (deleted afterwards), publishes one
destination, creates a producer key, and runs ``st run`` (schemathesis's CLI) three times,
sharing the time budget: with the admin key (every operation), with the producer key (the
producer operations) and with no key (every operation; the 401s are what is checked). Each
run goes through every phase (examples, coverage, fuzzing, stateful), with valid and invalid
data (``--mode all``) and every check. It prints, per run and in total: requests made, 5xx
answers and spec mismatches (failed checks other than 5xx); it exits 1 if either is not 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import redis
import redis.asyncio as aioredis
from cryptography.fernet import Fernet

from app.admin.producer_keys import ProducerKeys
from app.config.destinations import parse_config
from app.core.keys import Keys
from app.store.registry import publish_sync
from app.testing.harness import ROOT, forget_run, free_port, wait_until

ADMIN_KEY = f"fuzz-admin-{uuid.uuid4().hex}"
PHASES = "examples,coverage,fuzzing,stateful"
#: schemathesis.toml of the runs. Every check runs on every operation (schemathesis's default
#: is all of them), but where valid data may still be refused for the stored state, which the
#: spec cannot say (as in tests/test_schemathesis.py): a destination naming a connection that
#: does not exist (422), an OAuth state never issued (400); and a profile whose shape the
#: schema allows but whose content is refused (a time before 1970, an empty one): the 422
#: ingest report names each such profile and its reason, as the spec says.
CONFIG = """
[[operations]]
include-operation-id = ["createDestination", "replaceDestination", "patchDestination",
                        "oauthCallback", "ingestProfiles"]
checks.positive_data_acceptance.enabled = false
"""


@dataclass(frozen=True, slots=True)
class Figures:
    requests: int
    server_errors: int
    #: Failed checks other than "not a 5xx", by operation and check.
    mismatches: Counter[str]

    def __add__(self, other: Figures) -> Figures:
        return Figures(
            self.requests + other.requests,
            self.server_errors + other.server_errors,
            self.mismatches + other.mismatches,
        )


def _api_env(prefix: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "APP_ENV": "production",
        "REDIS_KEY_PREFIX": prefix,
        "CELERY_QUEUE": f"{prefix}-q",
        "ADMIN_API_KEY": ADMIN_KEY,
        "TOKEN_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        # OAuth configured (never completed here): authorize answers 201, not 503.
        "OUTREACH_CLIENT_ID": "fuzz",
        "OUTREACH_CLIENT_SECRET": "fuzz-secret",
        "OUTREACH_REDIRECT_URI": f"http://127.0.0.1:{port}/oauth/callback",
        # Schemathesis sends wrong keys on purpose and many requests: no throttling here.
        "AUTH_FAILURE_LIMIT": "1000000/minute",
        "PRODUCER_RATE_LIMIT": "1000000/minute",
        "LOG_LEVEL": "WARNING",
    }


def _publish(client: redis.Redis, keys: Keys) -> str:
    config = {
        "connections": [{"id": "conn", "user": "fuzz", "access_token": "fuzz-token"}],
        "destinations": [{"id": "fuzz", "name": "Fuzz", "connection": "conn"}],
    }
    publish_sync(client, keys, parse_config(config))
    return asyncio.run(_producer_key(keys))


async def _producer_key(keys: Keys) -> str:
    client = aioredis.from_url(_redis_url())
    try:
        _, secret = await ProducerKeys(client, keys).create("fuzz", ["fuzz"])
        return secret
    finally:
        await client.aclose()


def _redis_url() -> str:
    return os.environ.get("FUZZ_REDIS_URL") or os.environ.get(
        "REDIS_URL", "redis://127.0.0.1:6379/0"
    )


def _answers(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2):
            return True
    except OSError:
        return False


def st_run(
    base: str, *, label: str, headers: list[str], extra: list[str], max_s: int, seed: int
) -> Figures:
    """One ``st run``; its figures read from its NDJSON event stream."""
    with tempfile.TemporaryDirectory() as out:
        events = Path(out) / "events.ndjson"
        config = Path(out) / "schemathesis.toml"
        config.write_text(CONFIG)
        cmd = [
            str(Path(sys.executable).parent / "st"),
            "--config-file",
            str(config),
            "run",
            f"{base}/openapi.json",
            "--phases",
            PHASES,
            "--mode",
            "all",
            "--max-time",
            str(max_s),
            "--seed",
            str(seed),
            "--workers",
            "2",
            "--request-timeout",
            "30",
            "--suppress-health-check",
            "all",
            "--continue-on-failure",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(events),
            *[a for h in headers for a in ("-H", h)],
            *extra,
        ]
        print(f"== {label}: st run, {max_s} s", flush=True)
        subprocess.run(cmd, cwd=out, check=False)  # its cache (.schemathesis/) goes there too
        return figures(events)


def figures(events: Path) -> Figures:
    """Requests, 5xx answers and other failed checks in a schemathesis NDJSON report."""
    requests = server_errors = 0
    mismatches: Counter[str] = Counter()
    for line in events.read_text().splitlines():
        scenario = json.loads(line).get("ScenarioFinished")
        if scenario is None:
            continue
        recorder = scenario.get("recorder", {})
        for interaction in recorder.get("interactions", {}).values():
            requests += 1
            status = (interaction.get("response") or {}).get("status_code") or 0
            server_errors += status >= 500
        for checks in recorder.get("checks", {}).values():
            for check in checks:
                if check.get("status") == "failure" and check["name"] != "not_a_server_error":
                    mismatches[f"{recorder.get('label')}: {check['name']}"] += 1
    return Figures(requests, server_errors, mismatches)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--minutes", type=float, default=float(os.environ.get("FUZZ_MINUTES", "10"))
    )
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FUZZ_SEED", "19")))
    ns = parser.parse_args()
    prefix = f"fuzz{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(_redis_url())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = subprocess.Popen(
        [sys.executable, "-m", "app", "api", "--port", str(port)],
        cwd=ROOT,
        env=_api_env(prefix, port),
        stdout=subprocess.DEVNULL,
    )
    began = time.monotonic()
    try:
        producer_key = _publish(client, Keys(prefix))
        wait_until(lambda: _answers(base), timeout_s=60, what="the API")
        share_s = max(30, int(ns.minutes * 60 / 3))
        admin = st_run(
            base,
            label="admin key",
            headers=[f"Authorization: Bearer {ADMIN_KEY}"],
            extra=[],
            max_s=share_s,
            seed=ns.seed,
        )
        producer = st_run(
            base,
            label="producer key",
            headers=[f"X-API-Key: {producer_key}"],
            extra=["--include-path-regex", "^/v1/destinations/"],
            max_s=share_s,
            seed=ns.seed,
        )
        nobody = st_run(base, label="no key", headers=[], extra=[], max_s=share_s, seed=ns.seed)
    finally:
        api.terminate()
        api.wait(timeout=30)
        forget_run(client, prefix)
        client.close()
    minutes = (time.monotonic() - began) / 60
    total = admin + producer + nobody
    print(f"\n{'run':<14} {'requests':>9} {'5xx':>5} {'mismatches':>11}")
    runs = (("admin key", admin), ("producer key", producer), ("no key", nobody), ("total", total))
    for label, f in runs:
        mismatches = sum(f.mismatches.values())
        print(f"{label:<14} {f.requests:>9} {f.server_errors:>5} {mismatches:>11}")
    for what, count in sorted(total.mismatches.items()):
        print(f"  mismatch: {what} ({count})")
    print(f"duration {minutes:.1f} min, seed {ns.seed}")
    return 1 if total.server_errors or total.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
