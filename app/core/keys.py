"""Every Redis key and TTL, and the defaults of the settings (app/core/settings.py), each with
why it is what it is. A part's own tuning that no setting exposes lives with that part
(bulk delivery's in ``app/delivery/bulk_tuning.py``, the audience-id cap in ingest).

Keys of one destination carry the destination id in a hash tag (``{dest}``) so a Redis
Cluster keeps them in one slot and the Lua scripts may touch them together. The shared keys
(the catalog, connections, producer keys...) each live in a slot of their own and are never
touched by a destination's script (docs/operations.md, "Redis Cluster").
"""

from __future__ import annotations

from dataclasses import dataclass

# Defaults -------------------------------------------------------------------------------

#: How long changes to one prospect are gathered before it is sent: one request per burst.
COALESCE_WINDOW_MS = 1000
#: A claimed prospect not acknowledged within this time goes back to pending (crashed worker).
LEASE_MS = 60_000
#: Prospects one claim takes at once: large enough to keep the HTTP pipe full.
CLAIM_BATCH = 50
#: Most drain tasks running at once for one destination (across all hosts).
MAX_DRAINERS = 8
#: A drain task stops after this long so that Celery sees progress and fairness holds.
DRAIN_BUDGET_S = 20.0
#: The dispatcher never sleeps longer than this, so it notices new destinations and leases.
DISPATCH_MAX_SLEEP_S = 1.0
#: A pooled Redis connection idle this long is PINGed before it is used again, so one that a
#: restart, a failover or a NAT dropped fails there (and is replaced), not on a real command.
REDIS_HEALTH_CHECK_INTERVAL_S = 30
#: TCP keepalive on every Redis connection: an idle one whose peer vanished is found dead
#: after about idle + interval * count seconds (here 60 + 10 * 3), not hours later.
REDIS_KEEPALIVE_IDLE_S = 60
REDIS_KEEPALIVE_INTERVAL_S = 10
REDIS_KEEPALIVE_COUNT = 3
#: Outreach's documented quota: 10,000 requests per hour per user.
DEFAULT_RATE_LIMIT = "10000/hour"
#: Hourly dataflow metrics are kept this long (8 days: this week against the last).
METRICS_RETENTION_HOURS = 192
#: Failure ids the "recent failures" index keeps (the status page shows the newest 20; the
#: rest leaves room for ids replayed or purged since).
RECENT_FAILURES_KEPT = 200
#: Emails per lookup (``GET /prospects?filter[emails]=a,b,...``): Outreach documents no limit
#: on a list's length or the URL's, so a few dozen keep both modest.
RESOLVE_BATCH = 50
#: An email found is remembered this long (prospects rarely change email; a PATCH answering
#: 404 for a remembered id forgets it at once).
RESOLVE_CACHE_FOUND_S = 30 * 86_400
#: An email not found is remembered this short: someone may create its prospect meanwhile.
RESOLVE_CACHE_MISSING_S = 600

#: A user's default mailbox is looked up again after this long (it rarely changes).
ENROLL_MAILBOX_TTL_S = 3600
#: Backoff of an enrollment whose outcome is unknown or refused for now: base * 2**n, capped.
ENROLL_RETRY_BASE_S = 2.0
ENROLL_RETRY_CAP_S = 600.0

#: Wake signals kept while no dispatcher listens: one is enough to wake one.
WAKE_KEEP = 16


@dataclass(frozen=True, slots=True)
class Keys:
    """Names of the keys; ``prefix`` isolates deployments and test runs on one Redis."""

    prefix: str = "os"
    #: How long an hourly metrics hash lives (``METRICS_RETENTION_HOURS``; a setting).
    metrics_retention_hours: int = METRICS_RETENTION_HOURS

    # One destination ----------------------------------------------------------------
    def pending(self, dest: str, prospect: int | str) -> str:
        """Hash field -> JSON value: what is waiting to be sent."""
        return f"{self.prefix}:{{{dest}}}:pend:{prospect}"

    def versions(self, dest: str, prospect: int | str) -> str:
        """Hash field -> ms timestamp of the newest accepted value (newer-wins high mark)."""
        return f"{self.prefix}:{{{dest}}}:ver:{prospect}"

    def inflight(self, dest: str, prospect: int) -> str:
        """Hash field -> JSON value: the snapshot a worker is sending now."""
        return f"{self.prefix}:{{{dest}}}:fly:{prospect}"

    def delivered(self, dest: str, prospect: int) -> str:
        """Hash field -> JSON value last confirmed by Outreach (for no-op skipping)."""
        return f"{self.prefix}:{{{dest}}}:dlv:{prospect}"

    def due(self, dest: str) -> str:
        """Sorted set prospect -> ms when it may be sent ("not before")."""
        return f"{self.prefix}:{{{dest}}}:due"

    def leases(self, dest: str) -> str:
        """Sorted set prospect -> ms when its claim expires."""
        return f"{self.prefix}:{{{dest}}}:lease"

    def lease_tokens(self, dest: str) -> str:
        """Hash prospect -> claim token, so a late ack of an expired claim is recognised."""
        return f"{self.prefix}:{{{dest}}}:ltok"

    def first_seen(self, dest: str) -> str:
        """Hash prospect -> ms of its oldest pending change (lag and fairness)."""
        return f"{self.prefix}:{{{dest}}}:first"

    def attempts(self, dest: str) -> str:
        """Hash prospect -> failed attempts since its last delivery (backoff)."""
        return f"{self.prefix}:{{{dest}}}:tries"

    def failing_since(self, dest: str) -> str:
        """Hash prospect -> ms of its first failed attempt since its last delivery: the retry
        age (``MAX_RETRY_AGE_S``) runs from there, not from the change's arrival, so time
        spent waiting for quota or disabled does not turn a first failure into a dead letter."""
        return f"{self.prefix}:{{{dest}}}:failing"

    def drainers(self, dest: str) -> str:
        """Sorted set drain-slot id -> ms expiry: how many drain tasks are live."""
        return f"{self.prefix}:{{{dest}}}:drainers"

    def drainer_seq(self, dest: str) -> str:
        """Counter naming the next drain slot (``poll.lua``)."""
        return f"{self.prefix}:{{{dest}}}:drainers:seq"

    def retired(self, dest: str) -> str:
        """Set while the destination is deleted: ``merge.lua`` refuses changes for it. The
        catalog (``destinations``) lives in another cluster slot, so the deletion's check
        of the backlog and the refusal of new changes meet here, in the destination's slot."""
        return f"{self.prefix}:{{{dest}}}:retired"

    def hold(self, dest: str) -> str:
        """ms before which no drain starts: the quota gate granted nothing until then."""
        return f"{self.prefix}:{{{dest}}}:hold"

    def resumed(self, dest: str) -> str:
        """ms when the destination's connection was last (re)installed: time spent paused
        before it does not count against a change's retry age."""
        return f"{self.prefix}:{{{dest}}}:resumed"

    def invalid_mappings(self, dest: str) -> str:
        """Set of mapping IDs whose custom field Outreach refused as unusable (until the
        destination's configuration is published again)."""
        return f"{self.prefix}:{{{dest}}}:badmap"

    def audience_map(self, dest: str) -> str:
        """Hash audience id -> mapping ID learned from the producer's data (mapping_ids "data")."""
        return f"{self.prefix}:{{{dest}}}:amap"

    def mapping_holders(self, dest: str) -> str:
        """Hash mapping ID -> the audience holding it: one writer per ``customN`` field."""
        return f"{self.prefix}:{{{dest}}}:aholder"

    def mapping_issues(self, dest: str) -> str:
        """Hash audience id -> JSON of its latest mapping change or conflict (status, alerts)."""
        return f"{self.prefix}:{{{dest}}}:aissue"

    def counters(self, dest: str) -> str:
        """Hash counter name -> integer: dataflow totals of the destination."""
        return f"{self.prefix}:{{{dest}}}:count"

    def metrics_hour(self, dest: str, hour: int) -> str:
        """Hash metric name -> integer: the counters of one hour (epoch hour), with a TTL."""
        return f"{self.prefix}:{{{dest}}}:mh:{hour}"

    def metrics_ttl_s(self) -> int:
        """TTL of an hourly metrics hash: the retention plus the hour being written."""
        return (self.metrics_retention_hours + 1) * 3600

    def failures(self, dest: str) -> str:
        """Hash failure id -> JSON record: changes that could not be delivered."""
        return f"{self.prefix}:{{{dest}}}:fail"

    def failures_recent(self, dest: str) -> str:
        """Sorted set failure id -> ms it was recorded: the newest ``RECENT_FAILURES_KEPT``
        failure ids, so the status page reads the newest few without scanning the (possibly
        huge) failures hash. Replaying or purging a record removes its id here too."""
        return f"{self.prefix}:{{{dest}}}:failrecent"

    def bulk_batches(self, dest: str) -> str:
        """Hash batch id -> JSON (connection, deadline): bulk batches Outreach may still be
        working on, so one whose tracker died is cancelled before its prospects are resent."""
        return f"{self.prefix}:{{{dest}}}:bulkb"

    def bulk_state(self, dest: str) -> str:
        """Hash: bulk delivery's figures (calls, records, requests, quota charged) and why
        and until when it is off for the destination."""
        return f"{self.prefix}:{{{dest}}}:bulk"

    def bulk_connection(self, conn: str) -> str:
        """Hash: why and until when bulk is off for every destination of a connection (a
        403 for missing scopes; Outreach charging per record)."""
        return f"{self.prefix}:bulkconn:{{{conn}}}"

    def enroll_states(self, dest: str) -> str:
        """Hash ``prospect:sequence`` -> JSON: each enrollment's state machine (pending,
        sending under a lease, then enrolled, already, refused, failed; exits likewise)."""
        return f"{self.prefix}:{{{dest}}}:enr"

    def enroll_due(self, dest: str) -> str:
        """Sorted set ``prospect:sequence`` by when it is due (a sending one: its lease end,
        so a killed worker's enrollment comes back to be looked up)."""
        return f"{self.prefix}:{{{dest}}}:enrdue"

    def enroll_counts(self, dest: str) -> str:
        """Hash ``audience|outcome`` -> count: enrollment's figures for the status."""
        return f"{self.prefix}:{{{dest}}}:enrcount"

    def enroll_pause(self, dest: str) -> str:
        """Hash ``until_ms``, ``reason``: enrollment paused (a scope missing, a mailbox that
        cannot send) while field updates go on."""
        return f"{self.prefix}:{{{dest}}}:enrpause"

    def mailbox_cache(self, conn: str) -> str:
        """Hash user -> default mailbox id of a connection's Outreach users (``ENROLL_
        MAILBOX_TTL_S``): a mailbox is looked up once, not per enrollment."""
        return f"{self.prefix}:mailboxes:{{{conn}}}"

    # Identity resolution (app/resolve): profiles known by email only -----------------
    def email_pending(self, dest: str, email: str) -> str:
        """Hash field -> JSON value waiting for ``email``'s prospect(s) to be known."""
        return f"{self.prefix}:{{{dest}}}:epend:{email}"

    def email_versions(self, dest: str, email: str) -> str:
        """Hash field -> ms version of ``email``'s pending value (newer wins, as per prospect)."""
        return f"{self.prefix}:{{{dest}}}:ever:{email}"

    def email_due(self, dest: str) -> str:
        """Sorted set email -> ms when it may be resolved."""
        return f"{self.prefix}:{{{dest}}}:edue"

    def email_leases(self, dest: str) -> str:
        """Sorted set email -> ms when its resolution's claim expires (a killed worker)."""
        return f"{self.prefix}:{{{dest}}}:elease"

    def email_lease_tokens(self, dest: str) -> str:
        """Hash email -> claim token of the resolution under way."""
        return f"{self.prefix}:{{{dest}}}:eltok"

    def email_first_seen(self, dest: str) -> str:
        """Hash email -> ms of its oldest change waiting for resolution (its age)."""
        return f"{self.prefix}:{{{dest}}}:efirst"

    def email_cache(self, dest: str, email: str) -> str:
        """JSON [[prospect id, updatedAt], ...] Outreach answered for ``email`` ([]: none),
        with a TTL (``RESOLVE_CACHE_FOUND_S`` / ``RESOLVE_CACHE_MISSING_S``)."""
        return f"{self.prefix}:{{{dest}}}:ecache:{email}"

    def email_of(self, dest: str) -> str:
        """Hash prospect id -> the email it was resolved from (a 404 forgets that email)."""
        return f"{self.prefix}:{{{dest}}}:eof"

    def email_creates(self, dest: str) -> str:
        """Hash email -> JSON create intent (token, ms, state): at most one prospect is
        created per email; an intent left unsettled is settled by looking the email up."""
        return f"{self.prefix}:{{{dest}}}:ecreate"

    def for_emails(self) -> EmailKeys:
        """These keys with the pending state of emails in place of prospects', so the
        coalescing store's merge keeps email-keyed changes as it keeps prospects'."""
        return EmailKeys(self.prefix, self.metrics_retention_hours)

    # Shared ---------------------------------------------------------------------------
    def wake(self) -> str:
        """List the dispatchers block on: pushed when a prospect becomes pending."""
        return f"{self.prefix}:wake"

    def workers(self) -> str:
        """Sorted set worker hostname -> ms of its dispatcher's last heartbeat."""
        return f"{self.prefix}:workers"

    def destinations(self) -> str:
        """Hash destination id -> JSON configuration (loaded from the file or the admin API)."""
        return f"{self.prefix}:destinations"

    def connections(self) -> str:
        """Hash connection id -> JSON record (tokens Fernet-encrypted, connections/records.py)."""
        return f"{self.prefix}:connections"

    def refresh_lock(self, conn: str) -> str:
        """The one token refresh in flight for a connection, across all processes and hosts."""
        return f"{self.prefix}:reflock:{{{conn}}}"

    def oauth_state(self, state: str) -> str:
        """JSON of one pending authorization (connection id); single-use, expires."""
        return f"{self.prefix}:oauthstate:{state}"

    def quota(self, user: str) -> str:
        """Namespace of one Outreach user's shared request budget (one cluster slot)."""
        return f"{self.prefix}:quota:{{{user}}}"

    # Alerts (app/ops/alert_runner.py): one hash tag, so the runner's scripts may touch them all.
    def alerts_open(self) -> str:
        """Hash incident key -> JSON incident: alerts raised and not yet recovered."""
        return f"{self.prefix}:{{alerts}}:open"

    def alerts_sending(self, incident: str) -> str:
        """Held while one evaluator sends an incident's message, so no other sends it too."""
        return f"{self.prefix}:{{alerts}}:sending:{incident}"

    def alerts_lease(self) -> str:
        """Token of the one alert evaluator running (expires if its worker dies)."""
        return f"{self.prefix}:{{alerts}}:lease"

    def alerts_samples(self, dest: str) -> str:
        """Sorted set of counter samples (score: epoch s) of the last hour: rates' baseline."""
        return f"{self.prefix}:{{alerts}}:samples:{dest}"

    def alerts_pause_since(self) -> str:
        """Hash Outreach user -> epoch s its current 429 pause was first seen."""
        return f"{self.prefix}:{{alerts}}:pause-since"

    def producer_keys(self) -> str:
        """Hash key id -> JSON producer API key record (SHA-256 of the secret, never the secret)."""
        return f"{self.prefix}:producer-keys"

    def producer_rate(self) -> str:
        """Prefix of the producers' request-rate windows (``limits`` adds the key id)."""
        return f"{self.prefix}:producer-rate"

    def auth_failures(self) -> str:
        """Prefix of the failed-authentication windows (``limits`` adds the client address)."""
        return f"{self.prefix}:auth-failures"


@dataclass(frozen=True, slots=True)
class EmailKeys(Keys):
    """``Keys`` whose per-"prospect" pending state is the email namespace's (``for_emails``)."""

    def pending(self, dest: str, prospect: int | str) -> str:
        return self.email_pending(dest, str(prospect))

    def versions(self, dest: str, prospect: int | str) -> str:
        return self.email_versions(dest, str(prospect))

    def due(self, dest: str) -> str:
        return self.email_due(dest)

    def leases(self, dest: str) -> str:
        return self.email_leases(dest)

    def first_seen(self, dest: str) -> str:
        return self.email_first_seen(dest)
