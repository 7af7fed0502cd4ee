"""The live sandbox: config plus every in-memory store, shared by all handlers."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from app.sandbox.batches import ADD_TO_SEQUENCE, MODIFY, Applier, Apply, Batches
from app.sandbox.config import SandboxConfig
from app.sandbox.enrolment import enroll
from app.sandbox.errors import ApiError
from app.sandbox.faults import Faults
from app.sandbox.quota import Clock, Quota
from app.sandbox.sequences import Sequencing
from app.sandbox.state import SandboxState
from app.sandbox.tokens import TokenStore


class Sandbox:
    """Config, quota, tokens, state and fault generator of one sandbox server."""

    def __init__(self, config: SandboxConfig, clock: Clock = time.time) -> None:
        self.clock = clock
        self.config = config
        self.quota = Quota(config.quota_limit, config.quota_window_s, config.quota_mode, clock)
        self.tokens = TokenStore(config.access_token_ttl_s, clock)
        self.tokens.set_static(config.static_tokens, config.static_token_scope)
        self.state = SandboxState()
        self.faults = Faults(config.fault_seed)
        self.batches = Batches()
        self.bulk_records = 0
        self.sequences = Sequencing()

    def prospect_exists(self, prospect_id: int) -> bool:
        """Ids in the configured range exist; so does every prospect created or seeded."""
        low, high = self.config.prospect_ids
        return low <= prospect_id <= high or prospect_id in self.state.prospects

    def prospect(self, prospect_id: int) -> dict[str, Any] | None:
        """A prospect's stored attributes (none yet for an unwritten id in the range), or
        None if it does not exist."""
        stored = self.state.prospects.get(prospect_id)
        if stored is None and self.prospect_exists(prospect_id):
            return {}
        return stored

    def advance(self) -> None:
        """Work the bulk batches through to what the clock says they have done by now."""
        config, now = self.config, self.clock()
        apply = Apply(
            lambda pid, attributes: self.state.merge(pid, attributes, now=now),
            exists=self.prospect_exists,
            usable_custom_fields=config.usable_custom_fields,
        )
        appliers: dict[str, Applier] = {MODIFY: apply, ADD_TO_SEQUENCE: self._enroll_record}
        self.batches.advance(now, records_per_s=config.bulk_records_per_s, appliers=appliers)
        self.bulk_records += apply.records

    def _enroll_record(self, prospect_id: int, attributes: dict[str, Any]) -> str | None:
        try:
            enroll(
                self.sequences,
                prospect=self.prospect(prospect_id),
                prospect_id=prospect_id,
                sequence_id=attributes["sequenceId"],
                mailbox_id=attributes["mailboxId"],
                user="",
                config=self.config,
                now=self.clock(),
            )
        except ApiError as error:
            return error.detail
        return None

    def update_config(self, changes: dict[str, Any]) -> SandboxConfig:
        """Apply a partial config update (validated; raises pydantic.ValidationError)."""
        self._apply(self.config.updated(changes), reseed="fault_seed" in changes)
        return self.config

    def reset(self, config: SandboxConfig | None = None) -> SandboxConfig:
        """Clear prospects, log, counters and quotas; tokens survive."""
        self._apply(config or self.config, reseed=True)
        self.quota.clear()
        self.state.clear()
        self.batches = Batches()
        self.bulk_records = 0
        self.sequences = Sequencing()
        self.faults.rules.clear()
        return self.config

    def take_token_429(self) -> bool:
        """Whether this token call must be refused (consumes one `token_429_next`)."""
        pending = self.config.token_429_next
        if pending <= 0:
            return False
        self.config = self.config.model_copy(update={"token_429_next": pending - 1})
        return True

    def _apply(self, config: SandboxConfig, reseed: bool) -> None:
        self.config = config
        self.quota.configure(config.quota_limit, config.quota_window_s, config.quota_mode)
        self.tokens.access_ttl_s = config.access_token_ttl_s
        self.tokens.set_static(config.static_tokens, config.static_token_scope)
        if reseed:
            self.faults.reseed(config.fault_seed)


SANDBOX_KEY = web.AppKey("sandbox", Sandbox)
