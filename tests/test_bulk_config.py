"""Per-destination bulk settings: safe defaults, bad values named."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlparse

import pytest
import redis
import redis.asyncio as aioredis

from app.config.destinations import ConfigError, Destination, parse_config
from app.connections.oauth import authorize_url, scopes
from app.core.keys import Keys
from app.store.bulk_state import connection_uses_bulk
from app.store.registry import publish_sync
from tests.support import TEST_REDIS_URL, make_settings, settings_env


def test_bulk_is_off_unless_asked_for() -> None:
    dest = Destination(id="d", name="D", connection="c")
    assert dest.bulk.enabled is False
    assert (dest.bulk.min_group, dest.bulk.ids_per_call) == (50, 1000)


def test_a_config_file_sets_bulk_per_destination() -> None:
    config = parse_config(
        {
            "connections": [{"id": "c"}],
            "destinations": [
                {
                    "id": "d",
                    "name": "D",
                    "connection": "c",
                    "bulk": {"enabled": True, "ids_per_call": 200},
                }
            ],
        }
    )
    assert config.destination("d").bulk.enabled
    assert config.destination("d").bulk.ids_per_call == 200


@pytest.mark.parametrize(
    ("bulk", "where"),
    [
        ({"min_group": 1}, "bulk.min_group"),
        ({"ids_per_call": 0}, "bulk.ids_per_call"),
        ({"ids_per_call": 20_000}, "bulk.ids_per_call"),
        ({"enabled": "yes please"}, "bulk.enabled"),
        ({"bulk_size": 3}, "bulk.bulk_size"),
    ],
)
def test_bad_bulk_settings_are_refused_naming_the_field(
    bulk: dict[str, object], where: str
) -> None:
    doc = {
        "connections": [{"id": "c"}],
        "destinations": [{"id": "d", "name": "D", "connection": "c", "bulk": bulk}],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert where in str(info.value)


def test_connecting_asks_for_batch_scopes_only_when_a_destination_uses_bulk(
    prefix: str, rclient: redis.Redis
) -> None:
    settings = make_settings(settings_env(prefix, None))
    assert scopes(settings) == "prospects.all"
    assert scopes(settings, bulk=True) == "prospects.all batches.read batches.write"
    assert (
        "batches.write"
        in parse_qs(urlparse(authorize_url(settings, "s", bulk=True)).query)["scope"][0]
    )
    keys = Keys(prefix)
    doc = {
        "connections": [{"id": "c"}, {"id": "other"}],
        "destinations": [
            {"id": "d", "name": "D", "connection": "c", "bulk": {"enabled": True}},
            {"id": "e", "name": "E", "connection": "other"},
        ],
    }
    publish_sync(rclient, keys, parse_config(doc))

    async def check() -> tuple[bool, bool]:
        client = aioredis.from_url(TEST_REDIS_URL)
        try:
            return (
                await connection_uses_bulk(client, keys, "c"),
                await connection_uses_bulk(client, keys, "other"),
            )
        finally:
            await client.aclose()

    assert asyncio.run(check()) == (True, False)
