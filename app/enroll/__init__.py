"""Sequence enrollment: prospects entering an audience are put into its Outreach sequence
exactly once, and finished or paused there when they leave (docs/admin.md, "Sequences")."""

from app.enroll.calls import Caller
from app.enroll.mailboxes import Mailboxes
from app.enroll.stage import Enrollment, Sending
from app.enroll.store import EnrollStore, Figures, Intent, Job, Outcome

__all__ = [
    "Caller",
    "EnrollStore",
    "Enrollment",
    "Figures",
    "Intent",
    "Job",
    "Mailboxes",
    "Outcome",
    "Sending",
]
