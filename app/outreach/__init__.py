"""The Outreach adapter: the API client, request bodies, what an answer means (errors and
rate-limit signals), and the writable prospect fields."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.exports import load

if TYPE_CHECKING:
    from app.outreach.account import CustomFieldType, parse_types, rate_headers
    from app.outreach.answers import Answer, classify, no_answer, parse_answer
    from app.outreach.bulk import (
        Batch,
        BatchItem,
        BulkAnswer,
        BulkClient,
        BulkModification,
        ProspectIds,
        UnexpectedAnswer,
        parse_batch,
    )
    from app.outreach.client import OutreachClient, Response
    from app.outreach.fields import custom_field
    from app.outreach.signals import (
        ServerBudget,
        parse_budget,
        parse_reset,
        parse_try_again_at,
        reset_form,
        retry_after_at,
    )

_EXPORTS = {
    "Answer": "app.outreach.answers",
    "Batch": "app.outreach.bulk",
    "BatchItem": "app.outreach.bulk",
    "BulkAnswer": "app.outreach.bulk",
    "BulkClient": "app.outreach.bulk",
    "BulkModification": "app.outreach.bulk",
    "CustomFieldType": "app.outreach.account",
    "OutreachClient": "app.outreach.client",
    "ProspectIds": "app.outreach.bulk",
    "Response": "app.outreach.client",
    "ServerBudget": "app.outreach.signals",
    "UnexpectedAnswer": "app.outreach.bulk",
    "classify": "app.outreach.answers",
    "custom_field": "app.outreach.fields",
    "no_answer": "app.outreach.answers",
    "parse_answer": "app.outreach.answers",
    "parse_batch": "app.outreach.bulk",
    "parse_budget": "app.outreach.signals",
    "parse_reset": "app.outreach.signals",
    "parse_try_again_at": "app.outreach.signals",
    "parse_types": "app.outreach.account",
    "rate_headers": "app.outreach.account",
    "reset_form": "app.outreach.signals",
    "retry_after_at": "app.outreach.signals",
}

__all__ = [
    "Answer",
    "Batch",
    "BatchItem",
    "BulkAnswer",
    "BulkClient",
    "BulkModification",
    "CustomFieldType",
    "OutreachClient",
    "ProspectIds",
    "Response",
    "ServerBudget",
    "UnexpectedAnswer",
    "classify",
    "custom_field",
    "no_answer",
    "parse_answer",
    "parse_batch",
    "parse_budget",
    "parse_reset",
    "parse_try_again_at",
    "parse_types",
    "rate_headers",
    "reset_form",
    "retry_after_at",
]


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)
