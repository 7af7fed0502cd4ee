"""The obvious alternative, for comparison: one Celery task per prospect update, throttled by
Celery's own ``rate_limit`` (which holds per worker, not across workers), retrying a 429
twice and then dropping the update, as the reference destination does."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from celery import Celery

from bench.wiring import BENCH_REDIS_URL

app = Celery("baseline", broker=os.environ.get("BROKER_URL", BENCH_REDIS_URL))
app.conf.update(
    task_default_queue=os.environ.get("CELERY_QUEUE", "baseline"),
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
API = os.environ.get("OUTREACH_API_URL", "http://127.0.0.1:8099/api/v2")
TOKEN = os.environ.get("BASELINE_TOKEN", "test-token")
RETRY_AFTER_S = float(os.environ.get("BASELINE_RETRY_AFTER_S", "15"))


@app.task(
    name="baseline.patch", bind=True, max_retries=2, rate_limit=os.environ.get("BASELINE_RATE")
)
def patch(self: Any, prospect: int, fields: dict[str, Any]) -> int:
    body = {"data": {"type": "prospect", "id": prospect, "attributes": fields}}
    req = urllib.request.Request(
        f"{API}/prospects/{prospect}",
        data=json.dumps(body).encode(),
        method="PATCH",
        headers={"Content-Type": "application/vnd.api+json", "Authorization": f"Bearer {TOKEN}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        if exc.code == 429 and self.request.retries < 2:
            raise self.retry(countdown=RETRY_AFTER_S * (self.request.retries + 1)) from exc
        return int(exc.code)  # dropped after two retries, like the reference
