"""The Celery application: broker settings, the dispatcher bootstep, process lifecycle."""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery import Celery, bootsteps
from celery.signals import worker_process_shutdown

from app.dispatcher import Dispatcher
from app.settings import get_settings

log = logging.getLogger(__name__)
settings = get_settings()

app = Celery("outreach_sync", broker=settings.celery_broker_url, include=["workers.tasks"])
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
    broker_transport_options={"visibility_timeout": 3600},
)


class DispatcherStep(bootsteps.StartStopStep):
    """Runs the dispatcher thread in the worker's main process."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.dispatcher: Dispatcher | None = None
        self.thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        from workers.tasks import drain

        client = redis.Redis.from_url(str(settings.redis_url))

        def start_drain(dest: str, slot: str) -> None:
            drain.apply_async(args=(dest, slot))

        self.dispatcher = Dispatcher(client, settings, start_drain)
        self.thread = threading.Thread(target=self.dispatcher.run, name="dispatcher", daemon=True)
        self.thread.start()
        log.info("dispatcher started")

    def stop(self, parent: Any) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.thread is not None:
            self.thread.join(timeout=3)


app.steps["worker"].add(DispatcherStep)


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    from workers.runtime import close_runtime

    close_runtime()
