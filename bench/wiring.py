"""The Redis every benchmark uses: one setting, so a run can be pointed elsewhere."""

from __future__ import annotations

import os

#: Database 12 by default (the tests use 13); each run takes a fresh prefix and deletes it.
BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
