"""How bulk delivery paces itself: its page size, retries, and when it turns itself off.
Bulk's own constants, not settings: each follows from what Outreach does, and each says why."""

#: Batch items read per request (Outreach's largest page).
BULK_ITEMS_PAGE = 1000
#: Consecutive failed batches (cancelled, stuck, unreadable) that turn bulk off for a while.
BULK_MAX_BATCH_FAILURES = 3
#: A bulk call, batch-item read or cancel answered transiently (5xx, timeout, dropped
#: connection) is sent up to this many times in all, with backoff from base to cap: a resent
#: bulk call is harmless (the same ids and values), one PATCH per member is not.
BULK_CALL_ATTEMPTS = 5
BULK_RETRY_BASE_S = 0.5
BULK_RETRY_CAP_S = 8.0
#: Outreach charging a bulk call at least this share of its records per record: bulk saves
#: nothing, so it is turned off for the connection (for a day) and PATCH goes on.
BULK_PER_RECORD_SHARE = 0.5
BULK_PER_RECORD_OFF_S = 86_400.0
