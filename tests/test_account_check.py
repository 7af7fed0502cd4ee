"""``outreach-sync connections check`` against the sandbox over HTTP, as a real process: what
it confirms on a good account, what it fails on a bad one (a mapped custom field missing or
not text, a missing scope), and its one bulk write that changes nothing and reports the
charge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from typing import Any

import pytest
import redis

from app.config.destinations import Connection, parse_config
from app.connections.crypto import default_cipher
from app.connections.records import ConnectionStoreSync
from app.core.keys import Keys
from app.core.operations import run_sync
from app.delivery.account_lines import CheckReport, header_line
from app.outreach.account import parse_types
from app.store.audience_map import learn_op
from app.store.registry import publish_sync
from tests.support import ROOT, Sandbox, settings_env

BULK_SCOPES = "prospects.all batches.read batches.write"
JSONAPI = "application/vnd.api+json"


def setup(
    rclient: redis.Redis,
    prefix: str,
    *,
    scope: str | None,
    bulk: bool = False,
    sequencing: dict[str, Any] | None = None,
) -> None:
    """Connection ``conn`` (the sandbox's static token) and destination ``d`` writing
    custom4, custom9 (audiences) and custom12 (an attribute)."""
    config = parse_config(
        {
            "connections": [{"id": "conn", "user": "test-user"}],
            "destinations": [
                {
                    "id": "d",
                    "name": "d",
                    "connection": "conn",
                    "audiences": {"aud-a": 4, "aud-b": 9},
                    "attributes": {"segment": "custom12", "firstName": "firstName"},
                    "bulk": {"enabled": bulk},
                    "sequencing": sequencing or {},
                }
            ],
        }
    )
    keys = Keys(prefix)
    publish_sync(rclient, keys, config)
    ConnectionStoreSync(rclient, keys, default_cipher()).install(
        Connection(id="conn", user="test-user"),
        access_token="test-token",
        refresh_token=None,
        expires_at=None,
        scope=scope,
        source="oauth",
    )


def check(prefix: str, sandbox: Sandbox, *args: str) -> tuple[int, dict[str, Any]]:
    env = {**os.environ, **settings_env(prefix, sandbox)}
    done = subprocess.run(
        [sys.executable, "-m", "app", "connections", "check", "conn", "--json", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def lines(report: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {x["check"]: (x["status"], x["detail"], x["action"]) for x in report["lines"]}


def patch(sandbox: Sandbox, pid: int, attributes: dict[str, Any]) -> None:
    """Write a prospect as someone else in Outreach would."""
    body = {"data": {"type": "prospect", "id": pid, "attributes": attributes}}
    req = urllib.request.Request(
        f"{sandbox.api_url}/prospects/{pid}",
        data=json.dumps(body).encode(),
        method="PATCH",
        headers={"Authorization": "Bearer test-token", "Content-Type": JSONAPI},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def outreach_requests(sandbox: Sandbox) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = sandbox.get("/_sandbox/requests?since=0")["requests"]
    return requests


def test_a_good_account_passes_every_line_in_one_request_and_nothing_is_written(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox
) -> None:
    setup(rclient, prefix, scope=BULK_SCOPES, bulk=True)
    # Two destinations learning their mapping IDs from the data: one has learned custom7.
    learners = [
        {"id": d, "name": d, "connection": "conn", "mapping_ids": "data"} for d in ("l1", "l2")
    ]
    conn = {"id": "conn", "user": "test-user"}
    publish_sync(
        rclient, Keys(prefix), parse_config({"connections": [conn], "destinations": learners})
    )
    run_sync(rclient, learn_op(Keys(prefix), "l1", [("aud-x", 7)], now_ms=1))
    code, report = check(prefix, sandbox)
    found = lines(report)
    assert code == 0 and report["ok"], report
    assert found["custom7"][:2] == (
        "ok",
        "text, writable ('Custom 7'); written by l1 audience aud-x",
    )
    assert found["mapping IDs of l2"][0] == "warn" and "mapping IDs of l1" not in found
    assert found["token"][0] == "ok" and found["scopes"][0] == "ok"
    status, detail, _ = found["rate-limit headers"]
    assert status == "ok" and "X-RateLimit-Remaining: 9999" in detail
    assert "reset as epoch s" in detail
    status, detail, _ = found["quota gate"]
    assert status == "ok" and "Outreach says 9999 left" in detail
    assert "governing limit 10000" in detail and "below 1000 left" in detail
    for name in ("custom4", "custom9", "custom12"):
        assert found[name][0] == "ok" and "text, writable" in found[name][1], found[name]
    assert (
        "d audience aud-b" in found["custom9"][1] and "d attribute segment" in found["custom12"][1]
    )
    # Bulk is on but nothing may be written without --write: its charge stays unconfirmed.
    assert found["bulk charge"][0] == "warn" and "--write" in found["bulk charge"][2]
    sent = outreach_requests(sandbox)
    assert [(r["method"], r["path"]) for r in sent] == [("GET", "/api/v2/types")]
    assert report["requests"] == 1
    assert sandbox.prospects() == {} and sandbox.get("/_sandbox/batches") == []


def test_a_missing_field_a_number_field_and_a_missing_scope_fail_saying_what_to_do(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox
) -> None:
    sandbox.post(
        "/_sandbox/config", {"usable_custom_fields": 10, "custom_field_types": {4: "number"}}
    )
    setup(rclient, prefix, scope="prospects.all", bulk=True)
    code, report = check(prefix, sandbox)
    found = lines(report)
    assert code == 1 and not report["ok"]
    status, detail, action = found["scopes"]
    assert status == "fail" and "batches.read, batches.write" in detail
    assert "connections authorize conn" in action
    status, detail, action = found["custom4"]
    assert (status, detail.split(";")[0]) == ("fail", "a number field ('Custom 4')")
    assert "text field" in action
    assert found["custom9"][0] == "ok"
    status, detail, action = found["custom12"]
    assert status == "fail" and detail.startswith("not configured on the account")
    assert "create custom12" in action
    assert report["requests"] <= 5
    # Asked to write, it sends no bulk call that the missing scopes could not allow.
    code, report = check(prefix, sandbox, "--write", "--prospect", "42")
    assert code == 1 and lines(report)["bulk write"][:2] == (
        "warn",
        "not sent: it needs the scopes above",
    )
    assert sandbox.get("/_sandbox/batches") == [] and sandbox.prospects() == {}


def test_a_destination_that_enrolls_needs_the_sequence_scopes(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox
) -> None:
    sequencing = {"sequences": {"aud-a": {"sequence": 7}}}
    setup(rclient, prefix, scope="prospects.all users.all", sequencing=sequencing)
    code, report = check(prefix, sandbox)
    status, detail, _ = lines(report)["scopes"]
    assert code == 1 and status == "fail" and "(sequence enrollment is on)" in detail
    assert "sequenceStates.all" in detail and "users.read" not in detail
    granted = "prospects.all sequences.read sequenceStates.all mailboxes.read users.read"
    setup(rclient, prefix, scope=granted, sequencing=sequencing)
    assert lines(check(prefix, sandbox)[1])["scopes"][0] == "ok"


def test_scopes_unknown_for_hand_added_tokens_warn_but_do_not_fail(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox
) -> None:
    setup(rclient, prefix, scope=None)
    code, report = check(prefix, sandbox)
    assert code == 0
    status, detail, action = lines(report)["scopes"]
    assert status == "warn" and "not known" in detail and "authorize" in action


def test_an_unknown_token_fails_the_token_line(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox
) -> None:
    setup(rclient, prefix, scope=BULK_SCOPES)
    sandbox.post("/_sandbox/tokens/revoke", {"user": "test-user"})
    code, report = check(prefix, sandbox)
    assert code == 1
    status, detail, action = lines(report)["token"]
    assert status == "fail" and "401" in detail and "authorize" in action
    assert "custom4" not in lines(report)  # nothing is claimed of an account not reached


def test_write_makes_one_bulk_call_on_one_prospect_changes_nothing_and_reports_the_charge(
    prefix: str, rclient: redis.Redis, sandbox: Sandbox
) -> None:
    setup(rclient, prefix, scope=BULK_SCOPES, bulk=True)
    for pid, value in ((42, "realized"), (43, "exited")):
        patch(sandbox, pid, {"custom4": value})
    before = sandbox.prospects()
    charged_before = sandbox.stats()["by_user"]["test-user"]["charged"]

    code, report = check(prefix, sandbox, "--write", "--prospect", "42")
    found = lines(report)
    assert code == 0, report
    status, detail, _ = found["bulk charge"]
    assert status == "ok" and "charged 1 for 1 record" in detail
    status, detail, _ = found["bulk call"]
    assert status == "ok" and "custom4 of 42 unchanged" in detail
    # One batch, of prospect 42 alone, setting custom4 to what it held; nothing else changed.
    [batch] = sandbox.get("/_sandbox/batches")
    assert batch["ids"] == [42] and batch["modification"] == {"custom4": "realized"}
    assert sandbox.prospects() == before
    sent = outreach_requests(sandbox)[2:]  # after the two PATCHes of the setup
    assert all(r["method"] != "PATCH" for r in sent)
    assert [r["path"] for r in sent if r["method"] == "POST"] == [
        "/api/v2/batches/actions/prospectsBulkModify"
    ]
    assert len(sent) == report["requests"] <= 10
    assert sandbox.stats()["by_user"]["test-user"]["charged"] - charged_before == len(sent)


# The findings, from what Outreach could answer (pure: no HTTP) ------------------------------


def test_rate_limit_headers_in_other_names_or_forms_are_named_and_judged() -> None:
    def judged(headers: dict[str, str]) -> tuple[str, str]:
        report = CheckReport("c")
        header_line(report, headers, 1_700_000_000.0)
        [line] = report.lines
        return line.status, line.detail

    iso = {"X-RateLimit-Remaining": "7", "X-RateLimit-Reset": "2026-12-07T05:00:00Z"}
    status, detail = judged(iso)
    assert status == "ok" and detail.startswith("X-RateLimit-Remaining: 7, X-RateLimit-Reset: ")
    # 2026-12-07T05:00:00Z is 96,619,600 s after the "now" given.
    assert detail.endswith("; reset as ISO 8601, in 96619600 s")
    ms = {"x-ratelimit-reset": "1700000060000", "Retry-After": "60"}
    assert judged(ms)[1].endswith("reset as epoch ms, in 60 s")
    status, detail = judged({"RateLimit-Remaining": "7", "RateLimit-Reset": "60"})
    assert status == "warn" and "none of them X-RateLimit-*" in detail
    assert judged({"X-RateLimit-Reset": "soon"})[0] == "warn"
    assert judged({"Content-Type": "application/vnd.api+json"}) == (
        "warn",
        "none in Outreach's answer",
    )


def test_custom_fields_are_read_from_every_plausible_types_shape() -> None:
    doc = {
        "data": [
            {"type": "type", "id": "prospect.custom3", "attributes": {"dataType": "Text"}},
            {
                "type": "customField",
                "id": 5,
                "attributes": {"name": "custom5", "fieldType": "date"},
            },
            {
                "id": "x",
                "attributes": {"fieldName": "custom6", "validationType": "text", "readOnly": True},
            },
            {"id": "y", "attributes": {"fieldName": "custom7", "resourceType": "account"}},
            {"id": "custom8", "attributes": {}},
        ]
    }
    found = parse_types(doc)
    assert set(found) == {"custom3", "custom5", "custom6", "custom8"}  # custom7 is an account's
    assert found["custom3"].holds_text and found["custom5"].holds_text is False
    assert found["custom6"].read_only and found["custom8"].holds_text is None
    for unknown in ({"data": {}}, {"data": [{"id": "x", "attributes": {"name": "Region"}}]}, []):
        with pytest.raises(ValueError):
            parse_types(unknown)
