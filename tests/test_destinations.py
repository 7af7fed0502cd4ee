"""Destination configuration: the models, every problem reported at once, secrets kept out."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import limits
import pytest
from pydantic import ValidationError

from app.config.destinations import (
    Config,
    ConfigError,
    Connection,
    Destination,
    UnknownIdError,
    load_config,
    parse_config,
)
from app.outreach import fields as outreach_fields

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-token-value-xyz"


def config_data(**destination: Any) -> dict[str, Any]:
    dest: dict[str, Any] = {
        "id": "demo",
        "name": "Demo",
        "connection": "sandbox",
        "audiences": {"seg-a": 1, "seg-b": 2},
        "attributes": {"firstName": "firstName"},
    }
    dest.update(destination)
    return {"connections": [{"id": "sandbox"}], "destinations": [dest]}


def problems_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


# The example file ----------------------------------------------------------------------


def test_example_config_loads_with_its_token_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OUTREACH_SYNC_DEMO_TOKEN", SECRET)
    config = load_config(ROOT / "examples" / "destinations.json")
    conn = config.connection("sandbox")
    assert conn.user == "demo-user"
    assert conn.access_token is not None
    assert conn.access_token.get_secret_value() == SECRET
    demo = config.destination("demo")
    assert sorted(demo.audiences.values()) == [1, 2, 3, 4, 7, 12]
    assert demo.attributes == {k: k for k in ("firstName", "lastName", "title", "company")}
    assert demo.connection == "sandbox"


def test_example_config_without_its_token_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OUTREACH_SYNC_DEMO_TOKEN", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "examples" / "destinations.json")
    assert info.value.problems == [
        "connections[0].access_token: environment variable OUTREACH_SYNC_DEMO_TOKEN is not set"
    ]
    assert "destinations.json" in str(info.value)


# Valid configurations ---------------------------------------------------------------------


def test_defaults() -> None:
    config = parse_config(config_data())
    conn = config.connection("sandbox")
    dest = config.destination("demo")
    assert conn.user == "sandbox"
    assert conn.rate_limit == "10000/hour"
    assert conn.access_token is None
    assert dest.enabled is True
    assert dest.identity_namespace == "OutreachId"
    assert dest.status_values == {
        "realized": "realized",
        "existing": "existing",
        "exited": "exited",
    }
    assert dest.coalesce_window_ms is None
    assert dest.description == ""


def test_field_for_names_the_custom_field_of_the_mapping_id() -> None:
    dest = parse_config(config_data(audiences={"seg-a": 4, "seg-b": 150})).destination("demo")
    assert dest.field_for("seg-a") == "custom4"
    assert dest.field_for("seg-b") == "custom150"
    assert dest.field_for("seg-c") is None


def test_field_for_follows_a_copy_with_other_audiences() -> None:
    dest = parse_config(config_data()).destination("demo")
    assert dest.field_for("seg-a") == "custom1"
    copied = dest.model_copy(update={"audiences": {"seg-a": 9}})
    assert copied.field_for("seg-a") == "custom9"
    assert dest.field_for("seg-a") == "custom1"


def test_partial_status_values_keep_the_others_as_received() -> None:
    dest = parse_config(config_data(status_values={"exited": None})).destination("demo")
    assert dest.status_values == {"realized": "realized", "existing": "existing", "exited": None}


@pytest.mark.parametrize(
    ("text", "amount", "seconds"),
    [
        ("10000/hour", 10000, 3600),
        ("10000 per hour", 10000, 3600),
        ("60 per 10 seconds", 60, 10),
        ("5/minute", 5, 60),
        ("100/day", 100, 86400),
        ("1/2 seconds", 1, 2),
    ],
)
def test_rate_limits_in_limits_syntax_are_accepted(text: str, amount: int, seconds: int) -> None:
    data = config_data()
    data["connections"][0]["rate_limit"] = text
    assert parse_config(data).connection("sandbox").rate_limit == text
    parsed = limits.parse(text)  # what the rate limiter will do with it
    assert (parsed.amount, parsed.get_expiry()) == (amount, seconds)


@pytest.mark.parametrize("text", ["10000/fortnight", "hourly", "0/hour", "10 per 0 seconds", ""])
def test_bad_rate_limits_are_rejected_with_the_reason(text: str) -> None:
    data = config_data()
    data["connections"][0]["rate_limit"] = text
    [problem] = problems_of(data)
    assert problem.startswith(f"connections[0].rate_limit: {text!r} is not a rate limit")


def test_toml_is_read_when_the_suffix_says_so(tmp_path: Path) -> None:
    path = tmp_path / "destinations.toml"
    path.write_text(
        '[[connections]]\nid = "sandbox"\n\n[[destinations]]\nid = "demo"\nname = "Demo"\n'
        'connection = "sandbox"\n[destinations.audiences]\n"seg-a" = 7\n',
        encoding="utf-8",
    )
    assert load_config(path).destination("demo").field_for("seg-a") == "custom7"


def test_json_round_trip_of_the_models() -> None:
    dest = parse_config(config_data(status_values={"exited": None})).destination("demo")
    assert Destination.model_validate_json(dest.model_dump_json()) == dest
    conn = Connection(id="c1", access_token=SECRET)  # type: ignore[arg-type]
    doc = json.dumps({"id": conn.id, "user": conn.user, "access_token": SECRET})
    again = Connection.model_validate_json(doc)
    assert again.access_token is not None
    assert again.access_token.get_secret_value() == SECRET


# Invalid configurations: every problem, by location ------------------------------------


def test_mapping_ids_outside_1_to_150() -> None:
    problems = problems_of(config_data(audiences={"seg-a": 0, "seg-b": 151}))
    assert problems == [
        "destinations[0].audiences.seg-a: mapping ID 0 is outside 1–150",  # noqa: RUF001 - en dash as in the docs
        "destinations[0].audiences.seg-b: mapping ID 151 is outside 1–150",  # noqa: RUF001 - en dash as in the docs
    ]


@pytest.mark.parametrize("value", ["3", 3.0, True, None])
def test_mapping_ids_must_be_integers(value: object) -> None:
    problems = problems_of(config_data(audiences={"seg-a": value}))
    assert problems == ["destinations[0].audiences.seg-a: must be an integer"]


def test_duplicate_mapping_ids() -> None:
    problems = problems_of(config_data(audiences={"seg-a": 3, "seg-b": 3}))
    assert problems == [
        "destinations[0].audiences.seg-b: mapping ID 3 is already used by audience seg-a "
        "(mapping ID 3)"
    ]


def test_attribute_target_must_be_writable() -> None:
    problems = problems_of(config_data(attributes={"fullName": "name", "x": "custom151"}))
    assert problems == [
        "destinations[0].attributes.fullName: 'name' is not a writable Outreach prospect attribute",
        "destinations[0].attributes.x: 'custom151' is not a writable Outreach prospect attribute",
    ]


def test_attribute_may_not_write_an_audience_field_nor_another_attributes_field() -> None:
    problems = problems_of(
        config_data(
            audiences={"seg-a": 2},
            attributes={"note": "custom2", "firstName": "firstName", "givenName": "firstName"},
        )
    )
    assert problems == [
        "destinations[0].attributes.givenName: firstName is already written by attribute firstName",
        "destinations[0].attributes.note: custom2 is already written by audience seg-a "
        "(mapping ID 2)",
    ]


def test_unknown_connection_and_duplicate_ids() -> None:
    data = config_data(connection="nope")
    data["connections"].append({"id": "sandbox"})
    data["destinations"].append(copy.deepcopy(data["destinations"][0]))
    problems = problems_of(data)
    assert problems == [
        "connections[1].id: duplicate id 'sandbox' (also connections[0])",
        "destinations[0].connection: unknown connection 'nope' (configured: sandbox)",
        "destinations[1].connection: unknown connection 'nope' (configured: sandbox)",
        "destinations[1].id: duplicate id 'demo' (also destinations[0])",
    ]


def test_every_problem_is_reported_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    data: dict[str, Any] = {
        "connections": [
            {"id": "Bad Id", "access_token": "env:NO_SUCH_TOKEN_VAR", "colour": "red"},
            {"id": "ok", "rate_limit": "lots"},
        ],
        "destinations": [
            {
                "id": "demo",
                "name": "",
                "connection": "elsewhere",
                "audiences": {"a": 151, "b": 5, "c": 5},
                "attributes": {"x": "name", "y": "custom5"},
                "status_values": {"gone": "x"},
                "enabled": "yes",
            },
            "not an object",
            {"name": "no id", "connection": "ok"},
        ],
    }
    problems = problems_of(data)
    expected = [
        "connections[0].id: 'Bad Id' is not a valid id",
        "connections[0].access_token: environment variable NO_SUCH_TOKEN_VAR is not set",
        "connections[0].colour: is not a known setting",
        "connections[1].rate_limit: 'lots' is not a rate limit",
        "destinations[0].name: String should have at least 1 character",
        "destinations[0].connection: unknown connection 'elsewhere'",
        "destinations[0].enabled: must be true or false",
        "destinations[0].audiences.a: mapping ID 151 is outside",
        "destinations[0].audiences.c: mapping ID 5 is already used by audience b",
        "destinations[0].attributes.x: 'name' is not a writable",
        "destinations[0].attributes.y: custom5 is already written by audience b",
        "destinations[0].status_values.gone: key must be one of",
        "destinations[1]: must be an object",
        "destinations[2].id: is required",
    ]
    for fragment in expected:
        assert sum(p.startswith(fragment) for p in problems) == 1, (fragment, problems)
    assert len(problems) == len(expected), problems
    text = str(ConfigError(problems, "f.json"))
    assert text.startswith(f"invalid configuration in f.json ({len(expected)} problems):")
    assert all(f"\n  - {p}" in text for p in problems)


def test_configuration_must_be_an_object() -> None:
    assert problems_of([1, 2]) == ["the configuration must be an object"]


def test_unreadable_file_and_bad_json_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.source == str(missing)
    assert info.value.problems == ["cannot read the file: No such file or directory"]
    broken = tmp_path / "broken.json"
    broken.write_text('{"connections": [\n  {"id": }\n]}', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(broken)
    assert "broken.json" in str(info.value)
    assert info.value.problems[0].startswith("not valid JSON at line 2 column")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("connections = [", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(bad_toml)
    assert info.value.problems[0].startswith("not valid TOML")


def test_config_error_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(ConfigError(["a: b", "c: d"], "x.json")))
    assert (err.problems, err.source) == (["a: b", "c: d"], "x.json")


# Secrets ------------------------------------------------------------------------------------


def test_env_token_is_resolved_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_TOKEN_VAR", SECRET)
    data = config_data()
    data["connections"][0].update(access_token="env:DEMO_TOKEN_VAR", refresh_token=SECRET)
    config = parse_config(data)
    conn = config.connection("sandbox")
    assert conn.access_token is not None and conn.refresh_token is not None
    assert conn.access_token.get_secret_value() == SECRET
    assert conn.refresh_token.get_secret_value() == SECRET
    for text in (repr(config), str(config), repr(conn), config.model_dump_json()):
        assert SECRET not in text


def test_empty_env_token_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPTY_TOKEN_VAR", "")
    data = config_data()
    data["connections"][0]["access_token"] = "env:EMPTY_TOKEN_VAR"
    assert problems_of(data) == [
        "connections[0].access_token: environment variable EMPTY_TOKEN_VAR is empty"
    ]


def test_secrets_stay_out_of_error_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_TOKEN_VAR", SECRET)
    data = config_data(audiences={"a": 999})
    data["connections"][0].update(access_token="env:DEMO_TOKEN_VAR", refresh_token=SECRET)
    data["connections"].append({"id": "BAD", "access_token": SECRET, "refresh_token": 12})
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert len(info.value.problems) == 3  # the bad id, refresh_token's type, the mapping ID
    for text in (str(info.value), repr(info.value)):
        assert SECRET not in text
    with pytest.raises(ValidationError) as direct:
        Config.model_validate(data)
    assert SECRET not in str(direct.value)


# Lookups and the models used directly ---------------------------------------------------------


def test_unknown_ids_raise_a_clear_key_error() -> None:
    config = parse_config(config_data())
    with pytest.raises(KeyError) as info:
        config.destination("nope")
    assert isinstance(info.value, UnknownIdError)
    assert str(info.value) == "no destination with id 'nope' (configured: demo)"
    with pytest.raises(UnknownIdError, match="no connection with id 'x'"):
        config.connection("x")


def test_models_check_conflicts_when_built_directly() -> None:
    with pytest.raises(ValidationError, match="mapping ID 9 is already used"):
        Destination(id="d", name="D", connection="c", audiences={"a": 9, "b": 9})
    with pytest.raises(ValidationError, match="unknown connection 'c'"):
        Config(destinations=[Destination(id="d", name="D", connection="c")])


# Outreach's writable fields ---------------------------------------------------------------------


def test_writable_fields() -> None:
    assert outreach_fields.is_writable("custom1")
    assert outreach_fields.is_writable("custom150")
    assert not outreach_fields.is_writable("custom151")
    assert not outreach_fields.is_writable("custom0")
    assert not outreach_fields.is_writable("name")
    assert outreach_fields.custom_field(42) == "custom42"
    with pytest.raises(ValueError, match="outside"):
        outreach_fields.custom_field(151)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("firstName", "x" * 255, None),
        ("firstName", "x" * 256, "longer than 255 characters"),
        ("firstName", 5, "must be a string"),
        ("firstName", True, "must be a string"),
        ("firstName", None, None),
        ("custom9", "x" * 32_000, None),
        ("custom9", "x" * 32_001, "longer than 32000 characters"),
        ("linkedInUrl", "x" * 1001, "longer than 1000 characters"),
        ("personalNote1", "x" * 65_535, None),
        ("score", 4.5, None),
        ("score", True, "must be a number"),
        ("score", "4", "must be a number"),
        ("score", float("nan"), "must be a finite number"),
        ("optedOut", False, None),
        ("optedOut", 0, "must be true or false"),
        ("tags", ["a", "b"], None),
        ("tags", ["a", 1], "must be a list of strings"),
        ("tags", "a", "must be a list of strings"),
        ("name", "Ada", "'name' is not a writable Outreach prospect attribute"),
    ],
)
def test_check_value(field: str, value: object, reason: str | None) -> None:
    assert outreach_fields.check_value(field, value) == reason
