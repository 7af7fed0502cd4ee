"""Identity resolution: profiles known by email reach their prospects (looked up in batches,
cached, created at most once), a stage of the drain before the senders."""

from app.resolve.calls import Calls
from app.resolve.decide import AMBIGUOUS, NOT_FOUND, Decision, decide
from app.resolve.emails import EmailStore
from app.resolve.resolver import Resolver
from app.resolve.status import resolve_status

__all__ = [
    "AMBIGUOUS",
    "NOT_FOUND",
    "Calls",
    "Decision",
    "EmailStore",
    "Resolver",
    "decide",
    "resolve_status",
]
