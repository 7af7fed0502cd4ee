"""``outreach-sync``: the command line for producers and operators."""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from redis import exceptions as redis_errors

from app.cli import admin as cli_admin
from app.cli import status as status_cli
from app.core.errors import StoreFault, StoreUnavailable
from app.core.redis_client import sync_client
from app.core.settings import Settings, SettingsError, get_settings

if TYPE_CHECKING:
    import redis

    from app.config.destinations import Destination

#: Profiles per merge while ingesting a file: big enough to amortise the round trips.
INGEST_CHUNK = 1000


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def cmd_ingest(ns: argparse.Namespace) -> int:
    from tqdm import tqdm

    from app.ingest.batch import MalformedDocument, read_profiles
    from app.ingest.producer import Producer, UnknownDestination, send_patiently
    from app.ingest.report import IngestReport

    def waiting(cause: BaseException, left_s: float) -> None:
        print(f"Redis unavailable ({cause}); retrying for {left_s:.0f} s more", file=sys.stderr)

    stream: TextIO = sys.stdin if ns.file == "-" else open(ns.file, encoding="utf-8")  # noqa: SIM115
    with stream:
        profiles = itertools.islice(read_profiles(stream), ns.skip, None)
        producer = Producer()
        total = IngestReport()
        chunk: list[Any] = []
        bar = tqdm(unit=" profiles", disable=ns.quiet, file=sys.stderr)
        try:
            for chunk in _chunks(profiles, INGEST_CHUNK):
                send = functools.partial(
                    producer.send, ns.destination, chunk, start=ns.skip + total.received
                )
                batch = send_patiently(send, retry_for_s=ns.retry_for, on_wait=waiting)
                total.add(batch.report)
                bar.update(len(chunk))
        except UnknownDestination as exc:
            print(f"error: {exc}; load one with `outreach-sync config load FILE`", file=sys.stderr)
            return 2
        except (redis_errors.RedisError, StoreUnavailable, StoreFault) as exc:
            print(_not_stored(exc, ns.skip + total.received, len(chunk), ns), file=sys.stderr)
            return 1
        except MalformedDocument as exc:
            print(f"error: {ns.file}: {exc}; nothing was ingested", file=sys.stderr)
            return 2
        finally:
            bar.close()
            producer.close()
    for res in total.problems[: ns.show_problems]:
        print(f"  profile {res.index}: {res.outcome}: {res.reason}", file=sys.stderr)
    print(json.dumps(total.as_dict(), indent=None if ns.quiet else 2))
    return 0


def _not_stored(exc: BaseException, stored: int, chunk: int, ns: argparse.Namespace) -> str:
    """The one line an ingest that Redis failed ends with: why, and what to send again."""
    from app.ingest.producer import transient_cause

    wrapped = isinstance(exc, StoreUnavailable | StoreFault) and exc.__cause__ is not None
    cause = exc.__cause__ if wrapped else exc
    done = f"the first {stored} profiles were stored" if stored else "no profile was stored"
    if transient_cause(exc) is None:
        # Not an outage: Redis refused the command. Waiting or resending cannot help.
        before = f"The {stored} profiles before them were stored; of" if stored else "Of"
        return (
            f"error: Redis refused profiles {stored} to {stored + chunk - 1} ({cause}): a bug, "
            "not an outage, so sending them again fails the same way; please report it. "
            f"{before} these {chunk} some may be stored"
        )
    return (
        f"error: Redis unavailable for {ns.retry_for:g} s: {cause}; {done}, of the next "
        f"{chunk} some may be, the rest were not: resend with --skip {stored} (resending a "
        "stored profile is harmless: changes merge by version)"
    )


def cmd_config_load(ns: argparse.Namespace) -> int:
    from app.config.destinations import ConfigError, load_config
    from app.store.registry import publish_sync

    try:
        config = load_config(ns.file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = get_settings()
    publish_sync(sync_client(s), s.keys, config)
    ids = ", ".join(d.id for d in config.destinations)
    print(f"loaded {len(config.connections)} connection(s), destinations: {ids}")
    return 0


def cmd_api(ns: argparse.Namespace) -> int:
    from app.api.app import make_app
    from app.api.server import serve
    from app.ops.sentry import init_sentry
    from app.ops.startup import exposure_problems

    s = get_settings()
    init_sentry(s, component="api")
    app = make_app(s)
    # What startup loaded (modules, the app, its scripts) lives as long as the process: out
    # of the collector's generations, full collections no longer traverse it while requests
    # allocate (HTTP ingestion about a quarter faster: docs/benchmarks.md).
    gc.freeze()
    host = ns.host or s.api_host
    problems = exposure_problems(s, host)
    if problems:
        print("error: refusing to start:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    port = ns.port or s.api_port
    serve(app, host=host, port=port, header_timeout_s=s.api_header_timeout_s, say=print)
    return 0


def cmd_worker(ns: argparse.Namespace) -> int:
    """Replace this process with a Celery worker (app/ never imports Celery itself)."""
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker"]
    level = ns.loglevel or get_settings().log_level
    argv += ["--loglevel", level, "--concurrency", str(ns.concurrency), *ns.celery_args]
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover


def cmd_flower(ns: argparse.Namespace) -> int:
    """Replace this process with Flower on our broker, logging in our format."""
    os.execv(sys.executable, [sys.executable, "-m", "workers.flower", *ns.flower_args])
    return 0  # pragma: no cover


def cmd_sandbox(ns: argparse.Namespace) -> int:
    from app.sandbox.cli import main as sandbox_main

    sandbox_main(ns.sandbox_args)
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from app.cli.demo import run_demo

    return run_demo(keep_serving=not ns.once)


def cmd_failures_list(ns: argparse.Namespace) -> int:
    import time

    from app.store import failures
    from app.store.registry import destination_sync

    s = get_settings()
    client = sync_client(s)
    if ns.destination is not None and destination_sync(client, s.keys, ns.destination) is None:
        print(f"error: unknown destination {ns.destination!r}", file=sys.stderr)
        return 2
    recs = failures.list_failures(
        client,
        s.keys,
        destination=ns.destination,
        reason=ns.reason,
        mapping_id=ns.mapping_id,
        limit=ns.limit,
    )
    if ns.json:
        print(json.dumps(recs, indent=2))
    else:
        print(failures.render_table(recs, now_ms=int(time.time() * 1000)))
    return 0


def cmd_failures_show(ns: argparse.Namespace) -> int:
    from app.store import failures
    from app.store.registry import destination_sync

    s = get_settings()
    client = sync_client(s)
    if destination_sync(client, s.keys, ns.destination) is None:
        print(f"error: unknown destination {ns.destination!r}", file=sys.stderr)
        return 2
    rec = failures.show_failure(client, s.keys, ns.destination, ns.id)
    if rec is None:
        print(f"error: no failure {ns.id!r} in destination {ns.destination!r}", file=sys.stderr)
        return 1
    print(json.dumps(rec, indent=2))
    return 0


def _open_destination(
    dest_id: str,
) -> tuple[redis.Redis, Settings, Destination, int] | None:
    """Redis, the settings, the destination and its coalescing window; None (and a message)
    when the destination is unknown."""
    from app.store.prospects import effective_window_ms
    from app.store.registry import destination_sync

    s = get_settings()
    client = sync_client(s)
    dest = destination_sync(client, s.keys, dest_id)
    if dest is None:
        print(f"error: unknown destination {dest_id!r}", file=sys.stderr)
        return None
    return client, s, dest, effective_window_ms(dest, s.coalesce_window_ms)


def cmd_failures_replay(ns: argparse.Namespace) -> int:

    from app.enroll.store import requeue_sync
    from app.store import failures

    opened = _open_destination(ns.destination)
    if opened is None:
        return 2
    client, s, dest, window = opened
    now = int(time.time() * 1000)
    res = failures.replay(
        client,
        s.keys,
        destination=dest.id,
        failure_ids=ns.ids or None,
        reason=ns.reason,
        mapping_id=ns.mapping_id,
        window_ms=window,
        now_ms=now,
        requeue=lambda rec: requeue_sync(client, s.keys, dest.id, rec, now_ms=now),
    )
    for fid in res.missing:
        print(f"error: no failure {fid!r} in destination {dest.id!r}", file=sys.stderr)
    print(
        f"replayed {res.replayed} failure(s): {res.fields_applied} field(s) pending again, "
        f"{res.fields_stale} superseded by newer changes"
    )
    return 1 if res.missing else 0


def cmd_failures_purge(ns: argparse.Namespace) -> int:
    from app.store import failures
    from app.store.registry import destination_sync

    if not ns.ids and not ns.yes:
        print(
            "error: purge deletes every matching failure of the destination; "
            "name the failure IDs or confirm with --yes",
            file=sys.stderr,
        )
        return 2
    s = get_settings()
    client = sync_client(s)
    if destination_sync(client, s.keys, ns.destination) is None:
        print(f"error: unknown destination {ns.destination!r}", file=sys.stderr)
        return 2
    n = failures.purge(
        client,
        s.keys,
        destination=ns.destination,
        failure_ids=ns.ids or None,
        reason=ns.reason,
        mapping_id=ns.mapping_id,
    )
    print(f"purged {n} failure(s)")
    return 0


def cmd_resync(ns: argparse.Namespace) -> int:

    from app.store.resync import resync

    opened = _open_destination(ns.destination)
    if opened is None:
        return 2
    client, s, dest, window = opened
    n = resync(client, s.keys, dest.id, window_ms=window)
    print(f"resync of {dest.id}: {n} prospect(s) will be sent again")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="outreach-sync", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    ing = sub.add_parser("ingest", help="ingest profiles from a JSON or NDJSON file ('-': stdin)")
    ing.add_argument("file")
    ing.add_argument("-d", "--destination", required=True)
    ing.add_argument("-q", "--quiet", action="store_true")
    ing.add_argument("--show-problems", type=int, default=10, metavar="N")
    ing.add_argument(
        "--retry-for",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="wait this long for Redis to come back (a failover) before giving up",
    )
    ing.add_argument(
        "--skip", type=int, default=0, metavar="N", help="leave out the input's first N profiles"
    )
    ing.set_defaults(func=cmd_ingest)

    cfg = sub.add_parser("config", help="destinations and connections")
    cfg_sub = cfg.add_subparsers(dest="action", required=True)
    load = cfg_sub.add_parser("load", help="validate a configuration file and publish it")
    load.add_argument("file")
    load.set_defaults(func=cmd_config_load)

    status_cli.add_parsers(sub)

    api = sub.add_parser("api", help="run the producers' HTTP API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.set_defaults(func=cmd_api)

    wk = sub.add_parser("worker", help="run a Celery worker (with its dispatcher)")
    wk.add_argument("-c", "--concurrency", type=int, default=os.cpu_count() or 2)
    wk.add_argument("--loglevel", help="default: LOG_LEVEL")
    wk.add_argument("celery_args", nargs=argparse.REMAINDER)
    wk.set_defaults(func=cmd_worker)

    fw = sub.add_parser(
        "flower", help="run the Flower dashboard on the workers' broker (its options pass on)"
    )
    fw.add_argument("flower_args", nargs=argparse.REMAINDER)
    fw.set_defaults(func=cmd_flower)

    sb = sub.add_parser(
        "sandbox", help="run the local Outreach sandbox (its options: sandbox -- --help)"
    )
    sb.add_argument("sandbox_args", nargs=argparse.REMAINDER)
    sb.set_defaults(func=cmd_sandbox)

    demo = sub.add_parser("demo", help="sandbox + API + worker + sample traffic (make run)")
    demo.add_argument("--once", action="store_true", help="exit after the summary")
    demo.set_defaults(func=cmd_demo)

    fl = sub.add_parser("failures", help="changes Outreach would not take: list, replay, purge")
    fl_sub = fl.add_subparsers(dest="action", required=True)
    fl_list = fl_sub.add_parser("list", help="failure records, newest first")
    fl_list.add_argument("-d", "--destination")
    fl_list.add_argument("--limit", type=int, default=100, metavar="N")
    fl_list.add_argument("--json", action="store_true")
    fl_show = fl_sub.add_parser("show", help="one failure record in full")
    fl_show.add_argument("destination")
    fl_show.add_argument("id")
    fl_show.set_defaults(func=cmd_failures_show)
    fl_replay = fl_sub.add_parser(
        "replay", help="send failed changes again (newer changes win); deletes the records"
    )
    fl_purge = fl_sub.add_parser("purge", help="delete failure records without sending them")
    fl_purge.add_argument("--yes", action="store_true", help="confirm purging by filter")
    for sp in (fl_replay, fl_purge):
        sp.add_argument("-d", "--destination", required=True)
        sp.add_argument("ids", nargs="*", metavar="ID", help="failure ids (default: all matching)")
    for sp in (fl_list, fl_replay, fl_purge):
        sp.add_argument("--reason", help="e.g. http_422, retries_exhausted")
        sp.add_argument("--mapping-id", type=int, metavar="N", help="failures touching customN")
    fl_list.set_defaults(func=cmd_failures_list)
    fl_replay.set_defaults(func=cmd_failures_replay)
    fl_purge.set_defaults(func=cmd_failures_purge)

    rs = sub.add_parser("resync", help="send the delivered state of every prospect again")
    rs.add_argument("destination")
    rs.set_defaults(func=cmd_resync)
    cli_admin.add_parsers(sub)
    from app.cli import connections as cli_connections

    cli_connections.add_parsers(sub)
    from app.cli import enrollment as cli_enrollment

    cli_enrollment.add_parsers(sub)
    from app.cli import aep as cli_aep

    cli_aep.add_parsers(sub)
    return p


#: Subcommands that hand their remaining options to another program (Celery, Flower, the
#: sandbox).
_PASS_THROUGH = {"worker": "celery_args", "flower": "flower_args", "sandbox": "sandbox_args"}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; ``worker``, ``flower`` and ``sandbox`` pass options they do not know
    on, so ``outreach-sync sandbox --port 8900`` works without a ``--``."""
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    dest = _PASS_THROUGH.get(ns.command)
    if dest is None:
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return ns
    rest: list[str] = getattr(ns, dest)
    setattr(ns, dest, [*extra, *(rest[1:] if rest[:1] == ["--"] else rest)])
    return ns


def main(argv: Sequence[str] | None = None) -> None:
    ns = parse(argv)
    from app.connections.crypto import EncryptionKeyError
    from app.core.errors import UnreadableRecord

    try:
        from app.ops.logs import configure_logging

        configure_logging(get_settings())  # LOG_FORMAT / LOG_LEVEL, secrets redacted
        sys.exit(ns.func(ns))
    except (SettingsError, EncryptionKeyError) as exc:
        # EncryptionKeyError: TOKEN_ENCRYPTION_KEY missing outside development, or unusable.
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except UnreadableRecord as exc:
        # A command about one destination whose record is broken: say so, and how to fix it.
        print(
            f"error: {exc}; replace or delete it (docs/admin.md, 'Broken records')", file=sys.stderr
        )
        sys.exit(1)
