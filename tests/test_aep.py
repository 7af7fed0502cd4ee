"""The AEP Destination SDK package and its template, rendered the way Pebble renders it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from app.aep import package
from app.aep.pebble import Objects, PebbleTemplate, render_request
from app.config.destinations import Destination
from app.core.keys import Keys
from app.ingest.batch import ingest_sync, read_profiles
from app.store.registry import publish_sync
from tests.support import ALIASES, PROFILES, ROOT, e2e_config

D = "aep"
#: The template's ``destination`` variable: the Mapping IDs as the current form holds them.
CONTEXT = {"namespaceSegmentAliases": ALIASES}


def render(profiles: list[dict[str, Any]], objects: Objects = "java") -> Any:
    body = render_request(package.packaged_template(), profiles, CONTEXT, objects=objects)
    return json.loads(body)


# The package --------------------------------------------------------------------------


def test_committed_package_is_what_the_command_generates() -> None:
    assert package.stale_files(ROOT / "deploy/aep") == []


def test_the_guide_shipped_with_the_package_is_docs_aep() -> None:
    # The API serves it at the package's documentation link, installed or not.
    shipped = package.guide()
    assert shipped == (ROOT / "docs/aep.md").read_text(encoding="utf-8"), (
        "app/aep/guide.md differs: cp docs/aep.md app/aep/guide.md"
    )
    link = package.destination()["uiAttributes"]["documentationLink"]
    assert link == package.EXAMPLE_URL + package.DOCS_PATH


def test_destination_asks_for_profile_attributes_and_fewer_than_100_per_call() -> None:
    dest = package.destination()
    assert dest["schemaConfig"]["profileRequired"] is True  # profileFields are offered
    assert dest["schemaConfig"]["profileFields"]
    assert dest["aggregation"]["bestEffortAggregation"]["maxUsersPerRequest"] < 100


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
        # An object prints as the Java map it is in Pebble: Java's toString, not JSON.
        ("{{ m | raw }}", {"m": {"value": 'A"da', "n": [1, None]}}, '{value=A"da, n=[1, null]}'),
        ("{{ m }}|{{ t }}|{{ n }}|", {"m": {"a": {}}, "t": True, "n": None}, "{a={}}|true||"),
        # Java's trim strips only characters up to U+0020: a no-break space is not empty.
        ("{% if s is empty %}E{% else %}[{{ s }}]{% endif %}", {"s": "\u00a0"}, "[\u00a0]"),
        ("{% if s is empty %}E{% endif %}", {"s": " \t\n"}, "E"),
        (
            "{% if a is defined %}1{% endif %}{% if b is null %}2{% endif %}"
            "{% if m is map %}3{% endif %}{% if s is map %}4{% endif %}",
            {"a": None, "m": {}, "s": "x"},
            "23",
        ),
        ("{% if x == 1 %}one{% elseif x == 2 %}two{% else %}many{% endif %}", {"x": 2}, "two"),
        ("[{{ a.b.c }}]", {}, "[]"),
        ('{{ s | escape(strategy="json") }}', {"s": 'a"b\\c\n'}, 'a\\"b\\\\c\\n'),
        (  # as unbescape (Pebble's escaper) writes it: non-ASCII and & as \uXXXX, / after <
            '{{ s | escape(strategy="json") }}|{{ m | escape(strategy="json") }}',
            {"s": "é&</😀", "m": {"a": '"'}},
            '\\u00E9\\u0026<\\/\\uD83D\\uDE00|{a=\\"}',
        ),
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
            "ab|c|true",
        ),
    ],
)
def test_renderer_reads_pebble_as_pebble_does(
    source: str, context: dict[str, Any], expected: str
) -> None:
    assert PebbleTemplate(source).render(**context) == expected


def test_renderer_prints_objects_as_json_when_they_are_jackson_nodes() -> None:
    template = PebbleTemplate("{{ m | raw }}|{{ m }}", objects="json")
    assert template.render(m={"a": {"value": "x"}}) == '{"a":{"value":"x"}}|{"a":{"value":"x"}}'


# The template over AEP's shapes ---------------------------------------------------------


@pytest.mark.parametrize("objects", ["java", "json"])
def test_template_renders_every_documented_profile_shape_as_our_format(objects: Objects) -> None:
    body = render(PROFILES, objects)
    assert len(body["profiles"]) == len(PROFILES)
    first = body["profiles"][0]
    assert first["identityMap"] == {"OutreachId": [{"id": "1001"}, {"id": "1002"}], "Email": []}
    ups = first["segmentMembership"]["ups"]
    assert {a: m["mappingId"] for a, m in ups.items()} == {
        "788d8874-8007-4253-92b7-ee6b6c20c6f3": "7",
        "8f812592-3f06-416b-bd50-e7831848a31a": "8",
        "5b998cb9-9488-4ec3-8d95-fa8338ced490": "9",
    }  # the audience without an alias is left out, and counted
    assert first["unmappedAudiences"] == 1
    assert ups["5b998cb9-9488-4ec3-8d95-fa8338ced490"]["status"] == "exited"
    upload = first["segmentMembership"]["CustomerAudienceUpload"]
    assert upload["c1f1a7f0-1111-4111-8111-111111111111"]["mappingId"] == "10"
    assert first["attributes"]["title"] == {}
    assert body["profiles"][1]["identityMap"] == {"OutreachId": [], "Email": []}
    assert body["profiles"][3]["attributes"] == {}  # no attributes at all
    assert body["profiles"][5]["segmentMembership"] == {}


@pytest.mark.parametrize("objects", ["java", "json"])
def test_template_sends_a_profiles_emails_beside_its_outreach_ids(objects: Objects) -> None:
    known = {**PROFILES[1], "identityMap": {"Email": [{"id": "Ada@Example.com"}]}}
    [sent] = render([known], objects)["profiles"]
    assert sent["identityMap"] == {"OutreachId": [], "Email": [{"id": "Ada@Example.com"}]}


def test_the_package_offers_email_beside_outreach_id() -> None:
    namespaces = package.destination()["identityNamespaces"]
    assert set(namespaces) == {"OutreachId", "Email"}
    assert "transformation" not in namespaces["Email"]["acceptedGlobalNamespaces"]["Email"]


@pytest.mark.parametrize("objects", ["java", "json"])
def test_template_output_is_json_for_every_combination_of_the_samples(objects: Objects) -> None:
    for n in range(len(PROFILES) + 1):
        for subset in itertools.combinations(PROFILES, n):
            # raises on a dangling comma, and on an object printed as a Java map
            body = render(list(subset), objects)
            assert len(body["profiles"]) == n


def test_template_reads_the_older_segment_aliases_too() -> None:
    older = {"segmentAliases": {**ALIASES["ups"], **ALIASES["CustomerAudienceUpload"]}}
    body = render_request(package.packaged_template(), PROFILES, older)
    assert json.loads(body) == render(PROFILES)


def test_template_sends_every_attribute_shape_as_a_value_object_of_text() -> None:
    attributes = {
        "firstName": "Plain",
        "lastName": {"value": 'Q"uote \u00e9 </x> & \U0001f600'},
        "title": {},
        "company": None,
        "nickname": {"value": 42},
        "occupation": {"value": None},
        "githubUsername": {"other": "x"},
    }
    profile = {"identityMap": {"OutreachId": [{"id": "1"}]}, "attributes": attributes}
    (rendered,) = render([profile])["profiles"]
    assert rendered["attributes"] == {
        "firstName": {"value": "Plain"},
        "lastName": {"value": 'Q"uote \u00e9 </x> & \U0001f600'},
        "title": {},
        "company": {},
        "nickname": {"value": "42"},
        "occupation": {},
        "githubUsername": {},
    }


@pytest.fixture
def dest(prefix: str, rclient: redis.Redis) -> Destination:
    config = e2e_config(D, audiences={}, mapping_ids="data")
    publish_sync(rclient, Keys(prefix), config)
    return config.destination(D)


@pytest.mark.parametrize("objects", ["java", "json"])
def test_our_ingestion_accepts_the_rendered_body(
    rclient: redis.Redis, prefix: str, dest: Destination, objects: Objects
) -> None:
    body = render_request(package.packaged_template(), PROFILES, CONTEXT, objects=objects)
    batch = ingest_sync(rclient, Keys(prefix), dest, list(read_profiles(body)), window_ms=1000)
    doc = batch.report.as_dict(results=batch.results)
    outcomes = [p["outcome"] for p in doc["profiles"]]
    assert outcomes == ["accepted", "excluded", "accepted", "accepted", "accepted", "accepted"]
    (left_out,) = doc["profiles"][4]["audiences_rejected"]
    assert "'x\"y' is not a mapping ID" in left_out["reason"]
    # The audiences without a Mapping ID, counted by the template.
    assert (doc["ignored_audiences"], doc["unmapped_attributes"]) == (2, {})

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


def cli(*argv: str) -> int:
    from app.cli.main import parse

    ns = parse(list(argv))
    return int(ns.func(ns))


def test_a_users_package_goes_to_its_own_directory_and_is_checked_like_with_like(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli("aep", "package", "--url", "https://x.example") == 0
    out = tmp_path / package.DEFAULT_OUT
    server = json.loads((out / package.SERVER_FILE).read_text())
    assert server["urlBasedDestination"]["url"]["value"].startswith("https://x.example/v1/")
    assert package.stale_files(ROOT / "deploy/aep") == []  # the example is left alone
    assert cli("aep", "package", "--check") == 0  # the URLs its files carry
    assert cli("aep", "package", "--check", "--url", "https://y.example") == 1
    server_file = out / package.SERVER_FILE
    server_file.write_text(server_file.read_text().replace("PEBBLE_V1", "NONE", 1))
    capsys.readouterr()
    assert cli("aep", "package", "--check") == 1
    said = capsys.readouterr().out
    assert package.DESTINATION_FILE not in said  # only the edited file differs
    again = f"outreach-sync aep package --out {package.DEFAULT_OUT} --url https://x.example"
    assert f"to regenerate: {again}" in said


def preview(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``outreach-sync aep render`` of the first sample profile, as text."""
    samples = tmp_path / "profiles.json"
    samples.write_text(json.dumps(PROFILES[:1]))
    capsys.readouterr()
    assert cli("aep", "render", str(samples), *argv) == 0
    return capsys.readouterr().out


def test_preview_renders_the_package_with_the_aliases_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = preview(tmp_path, capsys, "--alias=788d8874-8007-4253-92b7-ee6b6c20c6f3=7")
    (rendered,) = json.loads(out)["profiles"]
    assert rendered["segmentMembership"]["ups"] == {
        "788d8874-8007-4253-92b7-ee6b6c20c6f3": {
            "status": "realized",
            "lastQualificationTime": "2026-11-20T13:15:49Z",
            "mappingId": "7",
        }
    }
    assert rendered["unmappedAudiences"] == 4


def test_preview_takes_an_audience_id_with_a_colon_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "t.pebble"
    template.write_text('{{ destination.namespaceSegmentAliases["ups"]["seg:1"] }}')
    assert preview(tmp_path, capsys, "--template", str(template), "--alias", "seg:1=7") == "7\n"


def test_preview_fills_only_the_alias_form_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "t.pebble"
    template.write_text(
        "[{{ destination.namespaceSegmentAliases }}][{{ destination.segmentAliases }}]"
    )
    t = ("--template", str(template))
    assert preview(tmp_path, capsys, *t, "--alias", "a=7") == "[{ups={a=7}}][]\n"
    assert preview(tmp_path, capsys, *t, "--segment-alias", "a=7") == "[][{a=7}]\n"
    context = tmp_path / "destination.json"
    context.write_text(
        json.dumps({"namespaceSegmentAliases": {"CustomerAudienceUpload": {"b": "9"}}})
    )
    got = preview(tmp_path, capsys, *t, "--destination", str(context))
    assert got == "[{CustomerAudienceUpload={b=9}}][]\n"


def test_preview_prints_an_object_as_pebble_prints_a_java_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "t.pebble"
    template.write_text("{% for p in input.profiles %}{{ p.attributes | raw }}{% endfor %}")
    got = preview(tmp_path, capsys, "--template", str(template))
    assert got == "{firstName={value=Ada}, lastName={value=Lovelace}, title={}}\n"
    json_nodes = preview(tmp_path, capsys, "--template", str(template), "--objects", "json")
    assert json.loads(json_nodes)["title"] == {}


def test_preview_keeps_a_mapping_id_of_a_no_break_space_as_pebble_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = preview(tmp_path, capsys, "--alias=788d8874-8007-4253-92b7-ee6b6c20c6f3=\u00a0")
    (rendered,) = json.loads(out)["profiles"]
    kept = rendered["segmentMembership"]["ups"]["788d8874-8007-4253-92b7-ee6b6c20c6f3"]
    assert kept["mappingId"] == "\u00a0"  # sent, and refused by our ingestion with the reason
