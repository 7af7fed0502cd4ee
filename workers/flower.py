"""Flower on our broker, logging like the rest of the service.

``python -m workers.flower [Flower's options]`` (``outreach-sync flower``, ``make flower``)
runs ``celery -A workers.celery_app flower`` in this process after routing the root logger to
our handler (JSON lines in production, secrets redacted). Flower's own logging setup is
Tornado's, which adds its colour formatter to the root logger only when that logger has no
handler yet: with ours in place, Flower's lines come out in the same format as the API's and
the workers', and one log pipeline reads them all.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from app.core.settings import get_settings
from app.ops.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> None:
    configure_logging(get_settings())
    from celery.bin.celery import celery

    args = ["-A", "workers.celery_app", "flower", *(sys.argv[1:] if argv is None else argv)]
    # Flower reads its options from sys.argv (its first item names the program).
    sys.argv = ["celery", *args]
    celery.main(args=args, prog_name="celery", auto_envvar_prefix="CELERY")


if __name__ == "__main__":
    main()
