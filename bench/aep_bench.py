"""What learning mapping IDs from the data costs: events/s through the batch API for a
destination with ``mapping_ids: "data"`` (every membership carrying its ``mappingId``, as AEP
sends it) against the same events for a configured audience table, in the same run on the
same Redis (database 12, a fresh prefix per mode, deleted afterwards).

``python -m bench.aep_bench [--events N] [--repeat R]`` prints the table (best of R runs).
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
import uuid
from typing import Any

import redis

from app.cli.sample import Sample, generate
from app.config.destinations import parse_config
from app.core.keys import Keys
from app.ingest.producer import Producer
from app.store.registry import publish_sync
from app.testing.harness import forget_run
from bench.ingest_bench import ATTRIBUTES, AUDIENCES, BENCH_REDIS_URL, CHUNK, DEST, _settings
from bench.table import Row, render


def _with_mapping_ids(sample: Sample) -> list[dict[str, Any]]:
    profiles = copy.deepcopy(sample.profiles)
    for profile in profiles:
        for audiences in profile.get("segmentMembership", {}).values():
            for audience, membership in audiences.items():
                if audience in AUDIENCES:
                    membership["mappingId"] = str(AUDIENCES[audience])
    return profiles


def _rate(prefix: str, profiles: list[dict[str, Any]], mode: str) -> tuple[float, int]:
    """Events/s of ``mode`` and the fields merged (both modes must merge the same)."""
    client = redis.Redis.from_url(BENCH_REDIS_URL)
    conn = {"id": "bench", "user": "bench-user", "access_token": "bench-token"}
    dest: dict[str, Any] = {"id": DEST, "name": "AEP bench", "connection": "bench"}
    dest |= {"attributes": ATTRIBUTES}
    dest |= {"mapping_ids": "data"} if mode == "data" else {"audiences": AUDIENCES}
    publish_sync(
        client, Keys(prefix), parse_config({"connections": [conn], "destinations": [dest]})
    )
    producer = Producer(_settings(prefix))
    fields = 0
    try:
        t0 = time.perf_counter()
        for start in range(0, len(profiles), CHUNK):
            batch = producer.send(DEST, profiles[start : start + CHUNK], start=start)
            fields += batch.report.fields_applied + batch.report.fields_stale
        return len(profiles) / (time.perf_counter() - t0), fields
    finally:
        producer.close()
        forget_run(client, prefix)
        client.close()


def run(*, events: int, repeat: int) -> list[Row]:
    sample = generate(events=events, prospects=max(1, events // 10), audiences=AUDIENCES)
    data_profiles = _with_mapping_ids(sample)
    run_id = f"ab{uuid.uuid4().hex[:10]}"
    config_rates, data_rates = [], []
    # The inputs out of the garbage collector's sight (as in bench.ingest_bench): otherwise
    # its full collections traverse them and time whichever mode they happen to fall in.
    gc.freeze()
    try:
        _interleave(run_id, repeat, sample, data_profiles, config_rates, data_rates)
    finally:
        gc.unfreeze()
    return [
        Row(
            "mapping IDs from the data",
            f"events/s, batch API, {events:,} events, best of {repeat}",
            max(data_rates),
            max(config_rates),
            "the same events with a configured audience table",
        )
    ]


def _interleave(
    run_id: str,
    repeat: int,
    sample: Sample,
    data_profiles: list[dict[str, Any]],
    config_rates: list[float],
    data_rates: list[float],
) -> None:
    for i in range(repeat):  # interleaved, so load on the shared machine hits both alike
        config_rate, config_fields = _rate(f"{run_id}c{i}", sample.profiles, "config")
        data_rate, data_fields = _rate(f"{run_id}d{i}", data_profiles, "data")
        if data_fields != config_fields:
            raise RuntimeError(f"data mode merged {data_fields} fields, config {config_fields}")
        config_rates.append(config_rate)
        data_rates.append(data_rate)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.aep_bench", description=__doc__)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=3)
    ns = p.parse_args(argv)
    print("\n".join(render(run(events=ns.events, repeat=ns.repeat))), file=sys.stdout)


if __name__ == "__main__":
    main()
