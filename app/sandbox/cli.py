"""Command-line options of the sandbox, reusable by the project CLI."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from app.sandbox.config import SandboxConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8099

# Options left at None fall back to SandboxConfig's defaults, kept in one place.
_CONFIG_OPTIONS = (
    "quota_limit",
    "quota_window_s",
    "quota_mode",
    "usable_custom_fields",
    "access_token_ttl_s",
    "client_id",
    "client_secret",
    "fault_5xx_rate",
    "fault_drop_rate",
    "fault_seed",
    "bulk_cost",
    "bulk_max_ids",
    "bulk_records_per_s",
    "bulk_fault",
    "page_size_max",
    "lookup_max_values",
    "disabled_sequence",
    "enroll_without_mailbox",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sandbox's options (host, port and every config knob) to `parser`."""
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--quota-limit", type=int, help="requests per window and user")
    parser.add_argument("--quota-window-s", type=float, help="quota window in seconds")
    parser.add_argument("--quota-mode", choices=("fixed", "sliding"))
    parser.add_argument("--usable-custom-fields", type=int, help="custom1..customK usable")
    parser.add_argument("--prospect-ids", type=int, nargs=2, metavar=("LOW", "HIGH"))
    parser.add_argument("--access-token-ttl-s", type=int)
    parser.add_argument("--client-id")
    parser.add_argument("--client-secret")
    parser.add_argument(
        "--static-token", action="append", default=[], type=_token_pair, metavar="TOKEN=USER"
    )
    parser.add_argument("--fault-5xx-rate", type=float)
    parser.add_argument("--fault-latency-ms", type=int, nargs=2, metavar=("MIN", "MAX"))
    parser.add_argument("--fault-drop-rate", type=float)
    parser.add_argument("--fault-seed", type=int)
    parser.add_argument("--bulk-cost", choices=("call", "record"), help="quota per bulk call")
    parser.add_argument("--bulk-max-ids", type=int, help="largest id list of a bulk call")
    parser.add_argument("--bulk-records-per-s", type=float, help="batch processing speed")
    parser.add_argument(
        "--bulk-fault", choices=("none", "stick", "cancel", "forbidden", "not_found", "malformed")
    )
    parser.add_argument("--page-size-max", type=int, help="largest page[size] of lists")
    parser.add_argument("--lookup-max-values", type=int, help="most emails per filter")
    parser.add_argument("--lookup-case-sensitive", action="store_true")
    parser.add_argument("--no-lookup-lists", action="store_true", help="400 on email lists")
    parser.add_argument("--purposeful-duplicates", action="store_true")
    parser.add_argument("--excluded-email-domain", action="append", default=[], metavar="DOMAIN")
    parser.add_argument("--disabled-sequence", choices=("refuse", "pending"))
    parser.add_argument("--enroll-without-mailbox", choices=("refuse", "default"))
    parser.add_argument("--no-ratelimit-headers", action="store_true")
    parser.add_argument("--no-retry-after", action="store_true")
    parser.add_argument("--no-field-pointers", action="store_true")


def config_from_args(ns: argparse.Namespace) -> SandboxConfig:
    """The SandboxConfig described by parsed options."""
    values: dict[str, Any] = {
        name: getattr(ns, name) for name in _CONFIG_OPTIONS if getattr(ns, name) is not None
    }
    if ns.prospect_ids is not None:
        values["prospect_ids"] = tuple(ns.prospect_ids)
    if ns.fault_latency_ms is not None:
        values["fault_latency_ms"] = tuple(ns.fault_latency_ms)
    values["static_tokens"] = dict(ns.static_token)
    values["send_ratelimit_headers"] = not ns.no_ratelimit_headers
    values["send_retry_after"] = not ns.no_retry_after
    values["field_pointers"] = not ns.no_field_pointers
    values["lookup_case_sensitive"] = ns.lookup_case_sensitive
    values["lookup_lists"] = not ns.no_lookup_lists
    values["purposeful_duplicates"] = ns.purposeful_duplicates
    values["excluded_email_domains"] = tuple(ns.excluded_email_domain)
    return SandboxConfig.model_validate(values)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m app.sandbox`."""
    from app.sandbox.server import run

    parser = argparse.ArgumentParser(
        prog="python -m app.sandbox", description="Outreach API v2 sandbox server."
    )
    add_arguments(parser)
    ns = parser.parse_args(argv)
    run(ns.host, ns.port, config_from_args(ns))


def _token_pair(text: str) -> tuple[str, str]:
    token, sep, user = text.partition("=")
    if not sep or not token or not user:
        raise argparse.ArgumentTypeError(f"expected TOKEN=USER, got {text!r}")
    return token, user
