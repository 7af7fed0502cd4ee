"""Which prospects carry an email, when each was created and last updated, the next new id."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def _emails(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))


class Directory:
    """An index kept beside the stored prospects; every write goes through `written`."""

    def __init__(self) -> None:
        #: Lower-cased email -> ids; a case-sensitive reader filters on the exact text.
        self._by_email: dict[str, set[int]] = {}
        self._emails: dict[int, tuple[str, ...]] = {}
        self.created: dict[int, float] = {}
        self.updated: dict[int, float] = {}
        self.next_id = 1

    def written(
        self,
        prospect_id: int,
        attributes: dict[str, Any],
        *,
        now: float,
        created_at: float | None = None,
    ) -> None:
        """Note a write of `attributes`: re-index its emails, stamp its times."""
        if "emails" in attributes:
            self._reindex(prospect_id, _emails(attributes["emails"]))
        if created_at is not None or prospect_id not in self.created:
            self.created[prospect_id] = now if created_at is None else created_at
        self.updated[prospect_id] = now
        self.next_id = max(self.next_id, prospect_id + 1)

    def ids_for(self, email: str, *, case_sensitive: bool) -> set[int]:
        """The prospects carrying `email`."""
        ids = self._by_email.get(email.strip().lower(), set())
        if not case_sensitive:
            return set(ids)
        exact = email.strip()
        return {pid for pid in ids if exact in self._emails.get(pid, ())}

    def taken(self, emails: Iterable[str], *, case_sensitive: bool) -> bool:
        """Whether any of `emails` already belongs to a prospect."""
        return any(self.ids_for(email, case_sensitive=case_sensitive) for email in emails)

    def by_email(self) -> dict[str, list[int]]:
        """Every lower-cased email with the ids of its prospects, ascending."""
        return {email: sorted(ids) for email, ids in self._by_email.items() if ids}

    def _reindex(self, prospect_id: int, emails: tuple[str, ...]) -> None:
        for old in self._emails.get(prospect_id, ()):
            self._by_email.get(old.strip().lower(), set()).discard(prospect_id)
        self._emails[prospect_id] = emails
        for new in emails:
            self._by_email.setdefault(new.strip().lower(), set()).add(prospect_id)
