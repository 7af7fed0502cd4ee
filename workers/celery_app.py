"""The Celery application: broker settings, the dispatcher bootstep, process lifecycle."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, bootsteps
from celery.signals import celeryd_init, setup_logging, worker_process_shutdown

from app.core.keys import DISPATCH_MAX_SLEEP_S
from app.core.redis_client import (
    broker_transport_options,
    broker_url,
    client_options,
    sync_client,
)
from app.core.settings import get_settings
from app.delivery.dispatcher import Dispatcher
from app.ops.alert_runner import AlertLoop
from workers.prometheus import MetricsStep

log = logging.getLogger(__name__)
settings = get_settings()

app = Celery("outreach_sync", broker=broker_url(settings), include=["workers.tasks"])
app.conf.update(
    task_default_queue=settings.celery_queue,
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_send_task_events=True,
    task_send_sent_event=True,
    broker_connection_retry_on_startup=True,
    # We never use ETAs/countdowns; redelivery of an unacked task after this is harmless
    # because drains are idempotent (claims are leased in Redis).
    # (kombu's sentinel:// transport under REDIS_SENTINELS: app/core/redis_client.py).
    broker_transport_options=broker_transport_options(settings),
    # The same deadlines for a Redis result backend, should one be configured.
    redis_socket_timeout=settings.redis_socket_timeout_s,
    redis_socket_connect_timeout=settings.redis_connect_timeout_s,
    redis_socket_keepalive=True,
    redis_backend_health_check_interval=client_options(settings)["health_check_interval"],
)


class DispatcherStep(bootsteps.StartStopStep):
    """Runs the dispatcher thread in the worker's main process."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        from app.ops.startup import StartupRefused, check_startup

        try:  # outside development: no worker without the keys
            check_startup(settings, serves_api=False)
        except StartupRefused as exc:
            raise SystemExit(f"error: {exc}") from None
        super().__init__(parent, **kwargs)
        self.dispatcher: Dispatcher | None = None
        self.thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        from workers.tasks import drain

        # Its BLPOP waits up to DISPATCH_MAX_SLEEP_S for a wake-up, on top of the deadline.
        client = sync_client(settings, block_s=DISPATCH_MAX_SLEEP_S)

        def start_drain(dest: str, slot: str) -> None:
            drain.apply_async(args=(dest, slot))

        self.dispatcher = Dispatcher(client, settings, start_drain, name=parent.hostname)
        self.thread = threading.Thread(target=self.dispatcher.run, name="dispatcher", daemon=True)
        self.thread.start()
        log.info("dispatcher started")

    def stop(self, parent: Any) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.thread is not None:
            self.thread.join(timeout=3)


app.steps["worker"].add(DispatcherStep)
app.steps["worker"].add(MetricsStep)  # /metrics on WORKER_METRICS_PORT (workers/prometheus.py)


class AlertStep(bootsteps.StartStopStep):
    """Runs the alert evaluator thread in the worker's main process (one evaluates at a
    time across the fleet: app/ops/alert_runner.py)."""

    requires = ("celery.worker.components:Pool",)

    def start(self, parent: Any) -> None:
        self.loop = AlertLoop(settings)
        self.loop.start()

    def stop(self, parent: Any) -> None:
        if getattr(self, "loop", None) is not None:
            self.loop.stop()


app.steps["worker"].add(AlertStep)


@setup_logging.connect
def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    """Our JSON/text logging instead of Celery's (the worker's --loglevel still counts)."""
    from app.ops.logs import configure_logging

    configure_logging(settings, level=loglevel or settings.log_level)


@celeryd_init.connect
def _init_sentry(**_: Any) -> None:
    from app.ops.sentry import init_sentry

    init_sentry(settings, component="worker")


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    from workers.runtime import close_runtime

    close_runtime()
