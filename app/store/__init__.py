"""Everything kept per destination in Redis: pending changes coalesced per prospect, dataflow
counters, dead letters, resync, and the published catalog of destinations and connections."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.exports import load

if TYPE_CHECKING:
    from app.store.audience_map import (
        Learned,
        forget_sync,
        learn_op,
        learned_sync,
        learned_table,
        mapping_issues,
    )
    from app.store.bulk_state import (
        BulkState,
        InFlight,
        bulk_status,
        connection_uses_bulk,
        cost_per_record,
    )
    from app.store.counters import (
        audience_metric,
        count_delivered,
        count_failed,
        count_op,
        drain_metrics,
        mapping_id_of,
    )
    from app.store.failures import list_failures, purge, replay, show_failure
    from app.store.prospects import (
        MERGE_CHUNK,
        Change,
        Claimed,
        MergeResult,
        Outcome,
        ProspectStore,
        effective_window_ms,
        encode,
        merge_op,
        merge_sync,
        poll_sync,
    )
    from app.store.registry import (
        CACHE_TTL_S,
        DestinationBusy,
        Registry,
        destination_sync,
        publish_sync,
        stored_destination,
        stored_destinations,
        swap_destination,
    )

_EXPORTS = {
    "BulkState": "app.store.bulk_state",
    "CACHE_TTL_S": "app.store.registry",
    "Change": "app.store.prospects",
    "Claimed": "app.store.prospects",
    "DestinationBusy": "app.store.registry",
    "InFlight": "app.store.bulk_state",
    "Learned": "app.store.audience_map",
    "MERGE_CHUNK": "app.store.prospects",
    "MergeResult": "app.store.prospects",
    "Outcome": "app.store.prospects",
    "ProspectStore": "app.store.prospects",
    "Registry": "app.store.registry",
    "audience_metric": "app.store.counters",
    "bulk_status": "app.store.bulk_state",
    "connection_uses_bulk": "app.store.bulk_state",
    "cost_per_record": "app.store.bulk_state",
    "count_delivered": "app.store.counters",
    "count_failed": "app.store.counters",
    "count_op": "app.store.counters",
    "destination_sync": "app.store.registry",
    "drain_metrics": "app.store.counters",
    "effective_window_ms": "app.store.prospects",
    "encode": "app.store.prospects",
    "forget_sync": "app.store.audience_map",
    "learn_op": "app.store.audience_map",
    "learned_sync": "app.store.audience_map",
    "learned_table": "app.store.audience_map",
    "list_failures": "app.store.failures",
    "mapping_id_of": "app.store.counters",
    "mapping_issues": "app.store.audience_map",
    "merge_op": "app.store.prospects",
    "merge_sync": "app.store.prospects",
    "poll_sync": "app.store.prospects",
    "publish_sync": "app.store.registry",
    "purge": "app.store.failures",
    "replay": "app.store.failures",
    "show_failure": "app.store.failures",
    "stored_destination": "app.store.registry",
    "stored_destinations": "app.store.registry",
    "swap_destination": "app.store.registry",
}

__all__ = [
    "CACHE_TTL_S",
    "MERGE_CHUNK",
    "BulkState",
    "Change",
    "Claimed",
    "DestinationBusy",
    "InFlight",
    "Learned",
    "MergeResult",
    "Outcome",
    "ProspectStore",
    "Registry",
    "audience_metric",
    "bulk_status",
    "connection_uses_bulk",
    "cost_per_record",
    "count_delivered",
    "count_failed",
    "count_op",
    "destination_sync",
    "drain_metrics",
    "effective_window_ms",
    "encode",
    "forget_sync",
    "learn_op",
    "learned_sync",
    "learned_table",
    "list_failures",
    "mapping_id_of",
    "mapping_issues",
    "merge_op",
    "merge_sync",
    "poll_sync",
    "publish_sync",
    "purge",
    "replay",
    "show_failure",
    "stored_destination",
    "stored_destinations",
    "swap_destination",
]


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)
