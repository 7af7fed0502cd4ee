"""The AEP Destination SDK package and its template, rendered the way Pebble renders it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from app.aep import package
from app.aep.pebble import PebbleTemplate, render_request
from app.config.destinations import Destination
from app.core.keys import Keys
from app.ingest.batch import ingest_sync, read_profiles
from app.store.registry import publish_sync
from tests.support import ALIASES, PROFILES, ROOT, e2e_config

D = "aep"


def render(profiles: list[dict[str, Any]]) -> Any:
    body = render_request(package.packaged_template(), profiles, ALIASES)
    return json.loads(body)


# The package --------------------------------------------------------------------------


def test_committed_package_is_what_the_command_generates() -> None:
    assert package.stale_files(ROOT / "deploy/aep") == []


def test_package_check_notices_a_hand_edit(tmp_path: Path) -> None:
    package.write_package(tmp_path)
    server = tmp_path / package.SERVER_FILE
    server.write_text(server.read_text().replace("PEBBLE_V1", "NONE", 1))
    assert package.stale_files(tmp_path) == [package.SERVER_FILE]


def test_server_posts_json_to_the_destination_named_by_the_customer_data_field() -> None:
    server = package.destination_server("https://bridge.example.org/")
    url = server["urlBasedDestination"]["url"]
    assert url == {
        "templatingStrategy": "PEBBLE_V1",
        "value": "https://bridge.example.org/v1/destinations/{{customerData.destinationId}}/profiles",
    }
    http = server["httpTemplate"]
    assert (http["httpMethod"], http["contentType"]) == ("POST", "application/json")
    assert http["requestBody"]["templatingStrategy"] == "PEBBLE_V1"
    assert "{#" not in http["requestBody"]["value"]  # comments stay in the readable file
    assert server["destinationServerType"] == "URL_BASED"


def test_destination_takes_bearer_keys_outreach_ids_and_typed_mapping_ids() -> None:
    dest = package.destination()
    assert dest["customerAuthenticationConfigurations"] == [{"authType": "BEARER"}]
    assert [f["name"] for f in dest["customerDataFields"]] == [package.DESTINATION_FIELD]
    assert dest["identityNamespaces"]["OutreachId"]["acceptsAttributes"] is True
    assert dest["segmentMappingConfig"] == {
        "mapExperiencePlatformSegmentName": False,
        "mapExperiencePlatformSegmentId": False,
        "mapUserInput": True,
    }
    assert "audienceTemplateId" not in json.dumps(dest)  # forbidden with mapUserInput
    assert dest["aggregation"]["aggregationType"] == "BEST_EFFORT"
    assert dest["aggregation"]["bestEffortAggregation"]["maxUsersPerRequest"] > 1
    assert dest["destinationDelivery"][0]["authenticationRule"] == "CUSTOMER_AUTHENTICATION"
    assert dest["backfillHistoricalProfileData"] is True
    fields = {f["name"] for f in dest["schemaConfig"]["profileFields"]}
    assert {"firstName", "lastName", "title"} <= fields and "custom7" not in fields


# Pebble's meaning, where it differs from Jinja2 ------------------------------------------


@pytest.mark.parametrize(
    ("source", "context", "expected"),
    [
        (  # a flag set before a loop keeps its value across iterations (AEP's comma pattern)
            "{% set sep = false %}{% for x in xs %}{% if sep %},{% endif %}"
            "{% set sep = true %}{{ x }}{% endfor %}",
            {"xs": [1, 2, 3]},
            "1,2,3",
        ),
        (
            "{% for e in m %}{{ e.key }}={{ e.value }};{% endfor %}",
            {"m": {"a": 1, "b": 2}},
            "a=1;b=2;",
        ),
        ("{% for x in xs %}{{ loop.index }}{% endfor %}", {"xs": "abc"}, "012"),
        (
            "{% for x in xs %}{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %}"
            "{% endfor %}",
            {"xs": [1, 2]},
            "FL",
        ),
        (
            "{% if a is empty %}1{% endif %}{% if b is empty %}2{% endif %}"
            "{% if c is empty %}3{% endif %}{% if d is empty %}4{% endif %}"
            "{% if missing is empty %}5{% endif %}{% if e is empty %}6{% endif %}",
            {"a": None, "b": "  ", "c": {}, "d": [], "e": "x"},
            "12345",
        ),
        ("{{ m | raw }}", {"m": {"value": 'A"da', "n": [1]}}, '{"value":"A\\"da","n":[1]}'),
        ("{% if x == 1 %}one{% elseif x == 2 %}two{% else %}many{% endif %}", {"x": 2}, "two"),
        ("[{{ a.b.c }}]", {}, "[]"),
        ('{{ s | escape(strategy="json") }}', {"s": 'a"b\\c\n'}, 'a\\"b\\\\c\\n'),
        (
            "{% for s in addedSegments(m) %}{{ s.key }}{% endfor %}|"
            "{% for s in m | removed %}{{ s.key }}{% endfor %}|{{ hasSegments(m) }}",
            {
                "m": {
                    "ups": {
                        "a": {"status": "realized"},
                        "b": {"status": "existing"},
                        "c": {"status": "exited"},
                    }
                }
            },
            "ab|c|True",
        ),
    ],
)
def test_renderer_reads_pebble_as_pebble_does(
    source: str, context: dict[str, Any], expected: str
) -> None:
    assert PebbleTemplate(source).render(**context) == expected


# The template over AEP's shapes ---------------------------------------------------------


def test_template_renders_every_documented_profile_shape_as_our_format() -> None:
    body = render(PROFILES)
    assert len(body["profiles"]) == len(PROFILES)
    first = body["profiles"][0]
    assert first["identityMap"] == {"OutreachId": [{"id": "1001"}, {"id": "1002"}]}
    ups = first["segmentMembership"]["ups"]
    assert {a: m["mappingId"] for a, m in ups.items()} == {
        "788d8874-8007-4253-92b7-ee6b6c20c6f3": "7",
        "8f812592-3f06-416b-bd50-e7831848a31a": "8",
        "5b998cb9-9488-4ec3-8d95-fa8338ced490": "9",
    }  # the audience without an alias is left out
    assert ups["5b998cb9-9488-4ec3-8d95-fa8338ced490"]["status"] == "exited"
    upload = first["segmentMembership"]["CustomerAudienceUpload"]
    assert upload["c1f1a7f0-1111-4111-8111-111111111111"]["mappingId"] == "10"
    assert first["attributes"]["title"] == {}
    assert body["profiles"][1]["identityMap"] == {"OutreachId": []}
    assert body["profiles"][3]["attributes"] == {}  # no attributes at all
    assert body["profiles"][5]["segmentMembership"] == {}


def test_template_output_is_json_for_every_combination_of_the_samples() -> None:
    for n in range(len(PROFILES) + 1):
        for subset in itertools.combinations(PROFILES, n):
            body = render(list(subset))  # raises on a dangling comma
            assert len(body["profiles"]) == n


@pytest.fixture
def dest(prefix: str, rclient: redis.Redis) -> Destination:
    config = e2e_config(D, audiences={}, mapping_ids="data")
    publish_sync(rclient, Keys(prefix), config)
    return config.destination(D)


def test_our_ingestion_accepts_the_rendered_body(
    rclient: redis.Redis, prefix: str, dest: Destination
) -> None:
    body = render_request(package.packaged_template(), PROFILES, ALIASES)
    batch = ingest_sync(rclient, Keys(prefix), dest, list(read_profiles(body)), window_ms=1000)
    doc = batch.report.as_dict(results=batch.results)
    outcomes = [p["outcome"] for p in doc["profiles"]]
    assert outcomes == ["accepted", "excluded", "accepted", "accepted", "accepted", "accepted"]
    (left_out,) = doc["profiles"][4]["audiences_rejected"]
    assert "'x\"y' is not a mapping ID" in left_out["reason"]

    def pending(pid: int) -> dict[str, Any]:
        raw = rclient.hgetall(Keys(prefix).pending(D, pid))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    expected_first = {
        "custom7": "realized",
        "custom8": "existing",
        "custom9": "exited",
        "custom10": "realized",
        "firstName": "Ada",
        "lastName": "Lovelace",
    }
    assert pending(1001) == pending(1002) == expected_first
    assert pending(1003) == {}
    assert pending(1004) == {"custom11": "exited"}
    assert pending(1005) == {"custom7": "exited", "firstName": 'Grace "Amazing" Hopper'}
    assert pending(1006) == {"lastName": "Turing"}


def test_cli_writes_checks_and_renders_the_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli.main import parse

    def run(*argv: str) -> int:
        ns = parse(list(argv))
        return int(ns.func(ns))

    out = str(tmp_path / "aep")
    assert run("aep", "package", "--out", out, "--url", "https://x.example") == 0
    assert run("aep", "package", "--out", out, "--url", "https://x.example", "--check") == 0
    assert run("aep", "package", "--out", out, "--check") == 1  # another URL: stale
    samples = tmp_path / "profiles.json"
    samples.write_text(json.dumps(PROFILES[:1]))
    capsys.readouterr()
    alias = "--alias=788d8874-8007-4253-92b7-ee6b6c20c6f3=7"
    assert run("aep", "render", str(samples), alias) == 0
    (rendered,) = json.loads(capsys.readouterr().out)["profiles"]
    assert rendered["segmentMembership"]["ups"] == {
        "788d8874-8007-4253-92b7-ee6b6c20c6f3": {
            "status": "realized",
            "lastQualificationTime": "2026-11-20T13:15:49Z",
            "mappingId": "7",
        }
    }
