"""Finding the fields Outreach refused without naming them: send halves until each bad
field is alone, so the good ones still land."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

from app.core.errors import DeliveryError, Permanent, RateLimited
from app.delivery.lot import LeaseLost, Lot, NoPermit, subset
from app.delivery.outcomes import Outcomes, failure_reason
from app.store.counters import count_delivered
from app.store.prospects import Claimed

#: Sends one part of a prospect's fields on a permit of its own (None: Outreach took it).
SendPart = Callable[[Lot, Claimed, Counter[str]], Awaitable[DeliveryError | None]]


class Bisection:
    """Sends halves of a refused PATCH through ``send_part`` and settles through ``outcomes``."""

    def __init__(self, outcomes: Outcomes, send_part: SendPart) -> None:
        self.outcomes = outcomes
        self.store = outcomes.store
        self.send_part = send_part

    async def run(self, lot: Lot, c: Claimed, stats: Counter[str]) -> None:
        """Outreach refused the PATCH without naming a field: send halves to find the bad
        ones, so the good fields still land. Each half costs a permit; without one, or on a
        transient error, the fields not yet settled simply wait in pending."""
        outcomes = self.outcomes
        queue, delivered = [sorted(c.fields)], []
        limited: RateLimited | None = None
        transient: DeliveryError | None = None
        no_permit = False
        while queue:
            names = queue.pop()
            for part in (names[: len(names) // 2], names[len(names) // 2 :]):
                stats["bisect_requests"] += 1
                err = await self.send_part(lot, subset(c, set(part)), stats)
                if isinstance(err, LeaseLost):
                    stats["lease_lost"] += 1
                    return  # taken over: the other drain sends the whole snapshot again
                if err is None:
                    delivered += part
                elif isinstance(err, Permanent) and len(part) == 1:
                    await outcomes.note_invalid(lot, set(part), err)
                    await outcomes.record(lot, subset(c, set(part)), err, failure_reason(err))
                    await self.store.drop_inflight(lot.dest.id, c.prospect, part)
                elif isinstance(err, Permanent):
                    queue.append(part)
                else:
                    if isinstance(err, NoPermit):
                        no_permit = True
                    else:  # Outreach's answer, or none
                        stats[f"error_{type(err).__name__.lower()}"] += 1
                        if isinstance(err, RateLimited):
                            limited = err
                        else:
                            transient = err
                            # No answer says whether Outreach applied this half: a later
                            # value equal to the last confirmed one must not be skipped.
                            await self.store.forget_delivered(lot.dest.id, c.prospect, part)
                    queue.clear()
                    break
        until = None
        if limited is not None:
            # As for a whole PATCH: the destination waits for the reset Outreach named.
            until = int(limited.reset_s * 1000)
            await self.store.hold(lot.dest.id, until, now_ms=outcomes.clock_ms())
        if delivered:
            # Delivered fields are recorded (the prospect was activated); the rest of the
            # snapshot returns to pending.
            stats["delivered"] += 1
            count_delivered(stats, lot.dest, {f: c.fields[f] for f in delivered})
            if not await outcomes.settle(lot, c, "ok", fields=tuple(delivered)):
                stats["duplicates"] += 1
        elif until is not None:
            await outcomes.settle(lot, c, "defer", due_ms=until)
        elif transient is not None:
            # Nothing landed: backoff and the retry age, as for a whole PATCH (settling "ok"
            # here would reset both and send the halves again every window, forever).
            await outcomes.retry(lot, c, transient)
        elif no_permit:
            await outcomes.settle(lot, c, "defer", due_ms=outcomes.clock_ms())
        else:
            await outcomes.settle(lot, c, "ok")  # every field failed on its own, and was recorded
