"""``outreach-sync``: the command line for producers and operators."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from app.settings import SettingsError, get_settings

#: Profiles per merge while ingesting a file: big enough to amortise the round trips.
INGEST_CHUNK = 1000


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def cmd_ingest(ns: argparse.Namespace) -> int:
    from tqdm import tqdm

    from app.ingest import IngestReport, read_profiles
    from app.producer import Producer, UnknownDestination

    stream: TextIO = sys.stdin if ns.file == "-" else open(ns.file, encoding="utf-8")  # noqa: SIM115
    with stream:
        profiles = read_profiles(stream)
        producer = Producer()
        total = IngestReport()
        bar = tqdm(unit=" profiles", disable=ns.quiet, file=sys.stderr)
        try:
            for chunk in _chunks(profiles, INGEST_CHUNK):
                batch = producer.send(ns.destination, chunk, start=total.received)
                total.add(batch.report)
                bar.update(len(chunk))
        except UnknownDestination as exc:
            print(f"error: {exc}; load one with `outreach-sync config load FILE`", file=sys.stderr)
            return 2
        finally:
            bar.close()
            producer.close()
    for res in total.problems[: ns.show_problems]:
        print(f"  profile {res.index}: {res.outcome}: {res.reason}", file=sys.stderr)
    print(json.dumps(total.as_dict(), indent=None if ns.quiet else 2))
    return 0


def cmd_config_load(ns: argparse.Namespace) -> int:
    import redis

    from app.destinations import ConfigError, load_config
    from app.registry import publish_sync

    try:
        config = load_config(ns.file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = get_settings()
    publish_sync(redis.Redis.from_url(str(s.redis_url)), s.keys, config)
    ids = ", ".join(d.id for d in config.destinations)
    print(f"loaded {len(config.connections)} connection(s), destinations: {ids}")
    return 0


def cmd_status(ns: argparse.Namespace) -> int:
    import asyncio

    from app.status import render_status

    print(asyncio.run(render_status(get_settings(), ns.destination, as_json=ns.json)))
    return 0


def cmd_api(ns: argparse.Namespace) -> int:
    from aiohttp import web

    from app.api import make_app

    s = get_settings()
    web.run_app(make_app(s), host=ns.host or s.api_host, port=ns.port or s.api_port, print=print)
    return 0


def cmd_worker(ns: argparse.Namespace) -> int:
    """Replace this process with a Celery worker (app/ never imports Celery itself)."""
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker"]
    argv += ["--loglevel", ns.loglevel, "--concurrency", str(ns.concurrency), *ns.celery_args]
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover


def cmd_sandbox(ns: argparse.Namespace) -> int:
    from app.sandbox.cli import main as sandbox_main

    sandbox_main(ns.sandbox_args)
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from app.demo import run_demo

    return run_demo(keep_serving=not ns.once)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="outreach-sync", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    ing = sub.add_parser("ingest", help="ingest profiles from a JSON or NDJSON file ('-': stdin)")
    ing.add_argument("file")
    ing.add_argument("-d", "--destination", required=True)
    ing.add_argument("-q", "--quiet", action="store_true")
    ing.add_argument("--show-problems", type=int, default=10, metavar="N")
    ing.set_defaults(func=cmd_ingest)

    cfg = sub.add_parser("config", help="destinations and connections")
    cfg_sub = cfg.add_subparsers(dest="action", required=True)
    load = cfg_sub.add_parser("load", help="validate a configuration file and publish it")
    load.add_argument("file")
    load.set_defaults(func=cmd_config_load)

    st = sub.add_parser("status", help="backlog, counters and quota per destination")
    st.add_argument("destination", nargs="?")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    api = sub.add_parser("api", help="run the producers' HTTP API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.set_defaults(func=cmd_api)

    wk = sub.add_parser("worker", help="run a Celery worker (with its dispatcher)")
    wk.add_argument("-c", "--concurrency", type=int, default=os.cpu_count() or 2)
    wk.add_argument("--loglevel", default="INFO")
    wk.add_argument("celery_args", nargs=argparse.REMAINDER)
    wk.set_defaults(func=cmd_worker)

    sb = sub.add_parser(
        "sandbox", help="run the local Outreach sandbox (its options: sandbox -- --help)"
    )
    sb.add_argument("sandbox_args", nargs=argparse.REMAINDER)
    sb.set_defaults(func=cmd_sandbox)

    demo = sub.add_parser("demo", help="sandbox + API + worker + sample traffic (make run)")
    demo.add_argument("--once", action="store_true", help="exit after the summary")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    try:
        sys.exit(ns.func(ns))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
