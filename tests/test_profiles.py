"""Profile validation: outcomes, reasons naming the field, versions, and no exception ever."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from app.config.destinations import Destination
from app.ingest.profiles import (
    MAX_FUTURE_SKEW_MS,
    FieldChange,
    ProfileResult,
    _fast_parse,
    _full_parse,
    evaluate_profile,
    parse_time,
)

A1 = "788d8874-8007-4253-92b7-ee6b6c20c6f3"
A2 = "8f812592-3f06-416b-bd50-e7831848a31a"
UNMAPPED = "00000000-0000-4000-8000-000000000000"
T_Q1, T_Q1_MS = "2026-11-20T13:15:49Z", 1_795_180_549_000
T_Q2, T_Q2_MS = "2026-11-21T09:02:11Z", 1_795_251_731_000
T_EV, T_EV_MS = "2026-11-21T09:02:12Z", 1_795_251_732_000
RECEIVED = 1_800_000_000_000

DEST = Destination(
    id="demo",
    name="Demo",
    connection="sandbox",
    audiences={A1: 4, A2: 12},
    attributes={
        "firstName": "firstName",
        "person.name.lastName": "lastName",
        "tags": "tags",
        "score": "score",
    },
)


def profile(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "identityMap": {"OutreachId": [{"id": "12345"}]},
        "segmentMembership": {
            "ups": {
                A1: {"status": "realized", "lastQualificationTime": T_Q1},
                A2: {"status": "exited", "lastQualificationTime": T_Q2},
            }
        },
        "attributes": {"firstName": {"value": "Ada"}, "birthDate": {}},
        "timestamp": T_EV,
    }
    raw.update(overrides)
    return raw


def evaluate(raw: object, dest: Destination = DEST) -> ProfileResult:
    return evaluate_profile(raw, dest, index=3, received_ms=RECEIVED)


def changes(result: ProfileResult) -> dict[str, tuple[object, int]]:
    return {c.field: (c.value, c.ts_ms) for c in result.changes}


# Accepted --------------------------------------------------------------------------------


def test_typical_profile() -> None:
    result = evaluate(profile())
    assert result == ProfileResult(
        index=3,
        outcome="accepted",
        reason=None,
        prospect_ids=(12345,),
        changes=(
            FieldChange("custom4", "realized", T_Q1_MS),
            FieldChange("custom12", "exited", T_Q2_MS),
            FieldChange("firstName", "Ada", T_EV_MS),
        ),
        ignored_audiences=0,
    )


def test_every_outreach_id_is_updated_once() -> None:
    ids = [{"id": "12"}, {"id": 34}, {"id": "12"}, {"id": "0056"}]
    result = evaluate(profile(identityMap={"OutreachId": ids, "email": [{"id": "a@b.c"}]}))
    assert result.outcome == "accepted"
    assert result.prospect_ids == (12, 34, 56)


def test_bad_ids_beside_a_good_one_do_not_exclude() -> None:
    ids = [{"id": "abc"}, {"id": "77"}, {"id": -3}]
    result = evaluate(profile(identityMap={"OutreachId": ids}))
    assert (result.outcome, result.reason, result.prospect_ids) == ("accepted", None, (77,))


def test_attribute_without_value_changes_nothing_and_null_clears() -> None:
    raw = profile(attributes={"firstName": {}, "score": {"value": None}, "other": {"value": 1}})
    result = evaluate(raw)
    assert result.outcome == "accepted"
    assert changes(result) == {
        "custom4": ("realized", T_Q1_MS),
        "custom12": ("exited", T_Q2_MS),
        "score": (None, T_EV_MS),
    }


def test_nested_attribute_path_and_literal_key_first() -> None:
    nested = profile(attributes={"person": {"name": {"lastName": {"value": "Lovelace"}}}})
    assert changes(evaluate(nested))["lastName"] == ("Lovelace", T_EV_MS)
    both = profile(
        attributes={
            "person.name.lastName": {"value": "Literal"},
            "person": {"name": {"lastName": {"value": "Nested"}}},
        }
    )
    assert changes(evaluate(both))["lastName"] == ("Literal", T_EV_MS)
    dead_end = profile(attributes={"person": {"name": "Lovelace"}})
    assert "lastName" not in changes(evaluate(dead_end))


def test_list_and_number_values() -> None:
    tags = ["vip", "emea"]
    raw = profile(attributes={"tags": {"value": tags}, "score": {"value": 7.5}})
    result = evaluate(raw)
    assert changes(result)["tags"] == (["vip", "emea"], T_EV_MS)
    assert changes(result)["score"] == (7.5, T_EV_MS)
    tags.append("later")  # the change holds its own copy
    assert changes(result)["tags"] == (["vip", "emea"], T_EV_MS)


def test_profile_with_nothing_to_change_is_still_accepted() -> None:
    result = evaluate({"identityMap": {"OutreachId": [{"id": 9}]}})
    assert (result.outcome, result.reason, result.prospect_ids, result.changes) == (
        "accepted",
        None,
        (9,),
        (),
    )


def test_null_sections_count_as_absent() -> None:
    raw = profile(segmentMembership=None, attributes=None, timestamp=None)
    assert evaluate(raw).outcome == "accepted"
    assert evaluate(raw).changes == ()


# Versions (ts_ms) --------------------------------------------------------------------------


def test_audience_without_qualification_time_takes_the_event_time() -> None:
    raw = profile(segmentMembership={"ups": {A1: {"status": "existing"}}})
    assert changes(evaluate(raw))["custom4"] == ("existing", T_EV_MS)


def test_received_time_when_the_profile_has_no_timestamp() -> None:
    raw = profile(segmentMembership={"ups": {A1: {"status": "existing"}}})
    del raw["timestamp"]
    got = changes(evaluate(raw))
    assert got["custom4"] == ("existing", RECEIVED)
    assert got["firstName"] == ("Ada", RECEIVED)


def test_epoch_ms_and_offset_timestamps() -> None:
    assert changes(evaluate(profile(timestamp=1_700_000_000_123)))["firstName"][1] == (
        1_700_000_000_123
    )
    offset = profile(timestamp="2026-11-21T10:02:12+01:00")
    assert changes(evaluate(offset))["firstName"][1] == T_EV_MS
    no_zone = profile(timestamp="2026-11-21T09:02:12")
    assert changes(evaluate(no_zone))["firstName"][1] == T_EV_MS


def test_times_far_ahead_of_arrival_order_the_change_as_if_made_on_arrival() -> None:
    """A typo'd year would otherwise win over every later update of the field forever."""
    soon = RECEIVED + MAX_FUTURE_SKEW_MS  # a producer's clock a little ahead: kept
    far = "2126-11-21T09:02:12Z"
    raw = profile(
        timestamp=far,
        segmentMembership={
            "ups": {
                A1: {"status": "realized", "lastQualificationTime": far},
                A2: {"status": "exited", "lastQualificationTime": soon},
            }
        },
    )
    got = changes(evaluate(raw))
    assert got["custom4"] == ("realized", RECEIVED)
    assert got["custom12"] == ("exited", soon)
    assert got["firstName"] == ("Ada", RECEIVED)
    assert changes(evaluate(profile(timestamp=soon + 1)))["firstName"] == ("Ada", RECEIVED)


def test_same_audience_in_two_namespaces_newest_wins() -> None:
    raw = profile(
        segmentMembership={
            "ups": {A1: {"status": "exited", "lastQualificationTime": T_Q2}},
            "CustomerAudienceUpload": {A1: {"status": "realized", "lastQualificationTime": T_Q1}},
        }
    )
    assert changes(evaluate(raw))["custom4"] == ("exited", T_Q2_MS)


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("2026-11-20T13:15:49Z", T_Q1_MS),
        ("2026-11-20T13:15:49.250Z", T_Q1_MS + 250),
        ("2026-11-20T15:15:49+02:00", T_Q1_MS),
        ("2026-11-20T13:15:49", T_Q1_MS),
        (T_Q1_MS, T_Q1_MS),
        (100_000_000_000, 100_000_000_000),  # the smallest integer read as milliseconds
        ("1970-01-01T00:00:00Z", 0),
    ],
)
def test_parse_time(value: object, ms: int) -> None:
    assert parse_time(value) == ms


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("yesterday", "'yesterday' is not an ISO 8601 time"),
        ("", "'' is not an ISO 8601 time"),
        (1.5, "1.5 is not an ISO 8601 time nor integer epoch milliseconds"),
        (True, "True is not an ISO 8601 time nor integer epoch milliseconds"),
        (None, "None is not an ISO 8601 time nor integer epoch milliseconds"),
        (-1, "-1 is not between 1970 and 9999"),
        (
            1_763_644_549,  # 2025-11-20 in epoch seconds
            "1763644549 looks like epoch seconds: integer times are epoch milliseconds "
            "(or send ISO 8601)",
        ),
        ("1969-12-31T23:59:59Z", "'1969-12-31T23:59:59Z' is not between 1970 and 9999"),
        (10**20, f"{10**20} is not between 1970 and 9999"),
    ],
)
def test_parse_time_errors(value: object, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_time(value)
    assert str(info.value) == reason


# Status values and unmapped audiences -------------------------------------------------------


def test_status_values_are_applied() -> None:
    dest = DEST.model_copy(
        update={"status_values": {"realized": "in", "existing": "in", "exited": None}}
    )
    got = changes(evaluate(profile(), dest))
    assert got["custom4"] == ("in", T_Q1_MS)
    assert "custom12" not in got  # null writes nothing: the field keeps what it holds


def test_unmapped_audiences_are_counted_not_written() -> None:
    raw = profile(
        segmentMembership={
            "ups": {A1: {"status": "realized"}, UNMAPPED: {"status": "realized"}},
            "CustomerAudienceUpload": {"another": {"status": "exited"}},
        }
    )
    result = evaluate(raw)
    assert result.ignored_audiences == 2
    assert set(changes(result)) == {"custom4", "firstName"}


# Excluded ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity_map", "reason"),
    [
        (None, "no OutreachId"),
        ({}, "no OutreachId"),
        ({"email": [{"id": "a@b.c"}]}, "no OutreachId"),
        ({"OutreachId": []}, "no OutreachId"),
        ({"OutreachId": None}, "no OutreachId"),
        ({"OutreachId": [{"id": "abc"}]}, "OutreachId 'abc' is not a positive 64-bit integer"),
        ({"OutreachId": [{"id": "0"}]}, "OutreachId '0' is not a positive 64-bit integer"),
        ({"OutreachId": [{"id": "-3"}]}, "OutreachId '-3' is not a positive 64-bit integer"),
        ({"OutreachId": [{"id": "1.5"}]}, "OutreachId '1.5' is not a positive 64-bit integer"),
        ({"OutreachId": [{"id": 1.5}]}, "OutreachId 1.5 is not a positive 64-bit integer"),
        ({"OutreachId": [{"id": 0}]}, "OutreachId 0 is not a positive 64-bit integer"),
        ({"OutreachId": [{"id": True}]}, "OutreachId True is not a positive 64-bit integer"),
        ({"OutreachId": [{"id": None}]}, "OutreachId None is not a positive 64-bit integer"),
        ({"OutreachId": [{"id": " 12"}]}, "OutreachId ' 12' is not a positive 64-bit integer"),
        ({"OutreachId": [{"id": "١٢"}]}, "OutreachId '١٢' is not a positive 64-bit integer"),
        (
            {"OutreachId": [{"id": "x"}, {"id": "-1"}]},
            "OutreachId 'x' is not a positive 64-bit integer; "
            "OutreachId '-1' is not a positive 64-bit integer",
        ),
    ],
)
def test_excluded(identity_map: object, reason: str) -> None:
    raw = profile(identityMap=identity_map)
    if identity_map is None:
        del raw["identityMap"]
    result = evaluate(raw)
    assert result == ProfileResult(3, "excluded", reason, (), (), 0)


def test_identity_namespace_comes_from_the_destination() -> None:
    dest = DEST.model_copy(update={"identity_namespace": "Oid"})
    assert evaluate(profile(), dest).reason == "no Oid"
    raw = profile(identityMap={"Oid": [{"id": "5"}]})
    assert evaluate(raw, dest).prospect_ids == (5,)


def test_huge_digit_string_is_excluded_not_raised() -> None:
    result = evaluate(profile(identityMap={"OutreachId": [{"id": "9" * 5000}]}))
    assert result.outcome == "excluded"
    assert result.reason is not None
    assert result.reason.endswith("... is not a positive 64-bit integer")


# Rejected ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (
            {"segmentMembership": {"ups": {A1: {"status": "gone"}}}},
            f"segmentMembership.ups.{A1}.status: 'gone' is not one of realized, existing, exited",
        ),
        (
            {"segmentMembership": {"ups": {A1: {"status": 1}}}},
            f"segmentMembership.ups.{A1}.status: must be a string",
        ),
        (
            {"segmentMembership": {"ups": {A1: {}}}},
            f"segmentMembership.ups.{A1}.status: is required",
        ),
        (
            {
                "segmentMembership": {
                    "ups": {A1: {"status": "realized", "lastQualificationTime": "soon"}}
                }
            },
            f"segmentMembership.ups.{A1}.lastQualificationTime: 'soon' is not an ISO 8601 time",
        ),
        ({"segmentMembership": {"ups": [A1]}}, "segmentMembership.ups: must be an object"),
        ({"segmentMembership": []}, "segmentMembership: must be an object"),
        ({"timestamp": "2026-13-45"}, "timestamp: '2026-13-45' is not an ISO 8601 time"),
        (
            {"timestamp": 1.5},
            "timestamp: 1.5 is not an ISO 8601 time nor integer epoch milliseconds",
        ),
        ({"attributes": ["firstName"]}, "attributes: must be an object"),
        ({"identityMap": {"OutreachId": {"id": "1"}}}, "identityMap.OutreachId: must be a list"),
        ({"identityMap": {"OutreachId": [{}]}}, "identityMap.OutreachId[0].id: is required"),
        ({"identityMap": {"OutreachId": ["12"]}}, "identityMap.OutreachId[0]: must be an object"),
        ({"identityMap": "12345"}, "identityMap: must be an object"),
    ],
)
def test_rejected_names_the_field(overrides: dict[str, Any], reason: str) -> None:
    assert evaluate(profile(**overrides)) == ProfileResult(3, "rejected", reason, (), (), 0)


BAD_ATTRIBUTES = [
    ({"firstName": {"value": 5}}, "must be a string"),
    ({"score": {"value": 10**400}}, "must be a finite number"),
    (
        {"tags": {"value": ["ok", "cut \ud83d"]}},
        "is not valid Unicode (it contains a lone surrogate)",
    ),
    ({"firstName": {"value": False}}, "must be a string"),
    ({"firstName": {"value": "x" * 256}}, "longer than 255 characters"),
    ({"firstName": {"text": "Ada"}}, 'must be a value or an object like {"value": ...}'),
    ({"firstName": 5}, "must be a string"),
    ({"tags": {"value": [1]}}, "must be a list of strings"),
    ({"score": {"value": "high"}}, "must be a number"),
]


@pytest.mark.parametrize(("attributes", "reason"), BAD_ATTRIBUTES)
def test_an_attribute_that_cannot_be_written_is_left_out_and_the_audiences_go_ahead(
    attributes: dict[str, Any], reason: str
) -> None:
    result = evaluate(profile(attributes={**attributes, "person": {"name": {"lastName": "L"}}}))
    (name,) = attributes
    assert (result.outcome, result.attributes_rejected) == ("accepted", ((name, reason),))
    assert changes(result) == {
        "custom4": ("realized", T_Q1_MS),
        "custom12": ("exited", T_Q2_MS),
        "lastName": ("L", T_EV_MS),
    }


@pytest.mark.parametrize(("attributes", "reason"), BAD_ATTRIBUTES)
def test_a_profile_with_nothing_usable_but_bad_attributes_is_rejected_naming_them(
    attributes: dict[str, Any], reason: str
) -> None:
    (name,) = attributes
    result = evaluate(profile(attributes=attributes, segmentMembership={}))
    assert result == ProfileResult(3, "rejected", f"attributes.{name}: {reason}", (), (), 0)


@pytest.mark.parametrize(
    "leaf", ["Plain", {"value": "Plain"}], ids=["plain (predefined)", "object (freeform)"]
)
def test_attribute_values_come_plain_or_as_objects(leaf: object) -> None:
    result = evaluate(profile(attributes={"firstName": leaf, "birthDate": None}))
    assert result.attributes_rejected == ()
    assert changes(result)["firstName"] == ("Plain", T_EV_MS)


def test_attributes_no_mapping_reads_are_named_and_unmapped_audiences_counted() -> None:
    attributes = {
        "firstName": {"value": "Ada"},
        "company": {"value": "Acme"},
        "title": "CTO",
        "person": {"name": {"lastName": {"value": "L"}}},
        "birthDate": {},
        "nickname": None,
    }
    result = evaluate(profile(attributes=attributes, unmappedAudiences=3))
    assert result.unmapped_attributes == ("company", "title")
    assert result.ignored_audiences == 3
    assert evaluate(profile(unmappedAudiences=-1)).reason == (
        "unmappedAudiences: must be an integer from 0 to 1000000"
    )


def test_several_problems_are_joined_on_one_line() -> None:
    raw = profile(
        segmentMembership={"ups": {A1: {"status": "gone"}, A2: {"status": "realized"}}},
        timestamp="never",
        identityMap={"OutreachId": [{"id": "1"}, {}]},
    )
    reason = evaluate(raw).reason
    assert reason == (
        f"segmentMembership.ups.{A1}.status: 'gone' is not one of realized, existing, exited; "
        "timestamp: 'never' is not an ISO 8601 time; "
        "identityMap.OutreachId[1].id: is required"
    )
    assert "\n" not in reason


def test_many_problems_are_capped() -> None:
    bad = {f"a{i}": {"status": "gone"} for i in range(8)}
    reason = evaluate(profile(segmentMembership={"ups": bad})).reason
    assert reason is not None
    assert reason.count("is not one of") == 5
    assert reason.endswith("; and 3 more")


def test_malformed_profile_is_rejected_even_without_an_id() -> None:
    raw = profile(timestamp="never")
    del raw["identityMap"]
    assert evaluate(raw).outcome == "rejected"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "a profile must be an object, not null"),
        ([], "a profile must be an object, not an array"),
        ("profile", "a profile must be an object, not a string"),
        (5, "a profile must be an object, not a number"),
        (False, "a profile must be an object, not a boolean"),
    ],
)
def test_non_objects_are_rejected(raw: object, reason: str) -> None:
    assert evaluate(raw) == ProfileResult(3, "rejected", reason, (), (), 0)


# Never raises; the fast path agrees with the models -----------------------------------------


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["null", "bool", "int", "float", "str", "time"]
    if depth < 4:
        kinds += ["list", "dict", "dict"]
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 1, 12345, 2**70, T_Q1_MS])
    if kind == "float":
        return rng.choice([0.0, 1.5, -2.25, 1e300])
    if kind == "str":
        return rng.choice(["", "abc", "12", "realized", "gone", "Z", A1, "ups", "value", "id"])
    if kind == "time":
        return rng.choice([T_Q1, "2026-02-30T00:00:00Z", "2026-11-20T13:15:49+14:00"])
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["id", "value", "status", "lastQualificationTime", "ups", A1, "OutreachId", "x"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths(value, (*prefix, i))
    return found


def mutated(rng: random.Random) -> Any:
    raw: Any = profile(
        identityMap={"OutreachId": [{"id": "12"}, {"id": 13}]},
        attributes={
            "firstName": {"value": "Ada"},
            "tags": {"value": ["a"]},
            "person": {"name": {"lastName": {"value": "L"}}},
        },
    )
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths(raw))
        if not path:
            return random_json(rng)
        parent = raw
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and rng.random() < 0.3:
            del parent[path[-1]]
        else:
            parent[path[-1]] = random_json(rng)
    return raw


ODD_INPUTS: list[Any] = [
    {},
    {"identityMap": None, "segmentMembership": None, "attributes": None},
    {"identityMap": {"OutreachId": [[]]}},
    {"identityMap": {"OutreachId": "12"}},
    {"segmentMembership": {"ups": None}},
    {"segmentMembership": {"ups": {A1: None}}},
    {"segmentMembership": {"ups": {A1: {"status": ["realized"]}}}},
    {"attributes": {"person": [1, 2]}, "identityMap": {"OutreachId": [{"id": 1}]}},
    {"attributes": {"person.name.lastName": None}, "identityMap": {"OutreachId": [{"id": 1}]}},
    {"timestamp": {}, "identityMap": []},
    [[[[]]]],
    "{}",
    1e308,
]


def test_never_raises_on_junk() -> None:
    rng = random.Random(20261120)
    inputs = ODD_INPUTS + [random_json(rng) for _ in range(1500)]
    inputs += [mutated(rng) for _ in range(3000)]
    outcomes = set()
    for raw in inputs:
        result = evaluate(raw)
        outcomes.add(result.outcome)
        assert (result.reason is None) == (result.outcome == "accepted"), (raw, result)
        if result.outcome != "accepted":
            assert result.changes == () and result.prospect_ids == ()
    assert outcomes == {"accepted", "excluded", "rejected"}


def test_fast_path_agrees_with_the_models() -> None:
    rng = random.Random(7)
    samples = [mutated(rng) for _ in range(3000)] + [profile()]
    taken = 0
    for raw in samples:
        if not isinstance(raw, dict):
            continue
        raw = json.loads(json.dumps(raw))  # JSON input only, as the service receives
        fast = _fast_parse(raw, "OutreachId")
        if fast is None:
            continue
        taken += 1
        full, problems = _full_parse(copy.deepcopy(raw), "OutreachId")
        assert (fast, []) == (full, problems), raw
    assert taken > 300  # the comparison above really ran on many profiles
