"""The sandbox HTTP server: routes, and a blocking runner."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

from aiohttp import web

from app.sandbox import (
    api,
    bulk_api,
    bulk_sequences,
    control,
    control_faults,
    control_prospects,
    control_sequences,
    creation,
    lookup,
    oauth,
    sequences_api,
)
from app.sandbox.config import SandboxConfig
from app.sandbox.context import SANDBOX_KEY, Sandbox
from app.sandbox.quota import Clock

# 150 custom fields of 32,000 characters plus two 64 KiB notes must fit in one PATCH.
MAX_BODY_BYTES = 16 * 1024 * 1024


def make_app(config: SandboxConfig, *, clock: Clock = time.time) -> web.Application:
    """An aiohttp application imitating Outreach's API, OAuth and a control API."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SANDBOX_KEY] = Sandbox(config, clock)
    app.router.add_patch("/api/v2/prospects/{id}", api.patch_prospect)
    app.router.add_get("/api/v2/prospects/{id}", api.get_prospect)
    app.router.add_get("/api/v2/types", api.list_types)
    app.router.add_post("/api/v2/batches/actions/prospectsBulkModify", bulk_api.bulk_modify)
    app.router.add_get("/api/v2/batches/{id}", bulk_api.get_batch)
    app.router.add_post("/api/v2/batches/{id}/actions/cancel", bulk_api.cancel_batch)
    app.router.add_post("/api/v2/batches/{id}/actions/confirm", bulk_api.confirm_batch)
    app.router.add_get("/api/v2/batchItems", bulk_api.batch_items)
    app.router.add_get("/oauth/authorize", oauth.authorize)
    app.router.add_post("/oauth/token", oauth.token)
    _add_control_routes(app.router)
    _add_identity_and_sequence_routes(app.router)
    return app


def _add_identity_and_sequence_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v2/prospects", lookup.find_prospects)
    router.add_post("/api/v2/prospects", creation.create_prospect)
    router.add_get("/api/v2/sequences/{id}", sequences_api.get_sequence)
    router.add_get("/api/v2/mailboxes", sequences_api.list_mailboxes)
    router.add_get("/api/v2/users/{id}", sequences_api.get_user)
    router.add_post("/api/v2/sequenceStates", sequences_api.create_state)
    router.add_get("/api/v2/sequenceStates", sequences_api.list_states)
    router.add_post("/api/v2/sequenceStates/{id}/actions/{action}", sequences_api.state_action)
    router.add_delete("/api/v2/sequenceStates/{id}", sequences_api.delete_state)
    router.add_post(
        "/api/v2/batches/actions/prospectsAddToSequence", bulk_sequences.add_to_sequence
    )
    router.add_post("/_sandbox/prospects", control_prospects.seed)
    router.add_get("/_sandbox/emails", control_prospects.emails)
    router.add_post("/_sandbox/sequences", control_sequences.define_sequences)
    router.add_post("/_sandbox/mailboxes", control_sequences.define_mailboxes)
    router.add_post("/_sandbox/opted-out", control_sequences.opt_out)
    router.add_get("/_sandbox/sequence-states", control_sequences.sequence_states)
    router.add_get("/_sandbox/faults", control_faults.armed)
    router.add_post("/_sandbox/faults", control_faults.arm)
    router.add_post("/_sandbox/faults/clear", control_faults.disarm)


def _add_control_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/_sandbox/prospects", control.prospects)
    router.add_get("/_sandbox/prospects/{id}", control.prospect)
    router.add_get("/_sandbox/stats", control.stats)
    router.add_get("/_sandbox/batches", control.batches)
    router.add_get("/_sandbox/requests", control.requests)
    router.add_post("/_sandbox/reset", control.reset)
    router.add_get("/_sandbox/config", control.get_config)
    router.add_post("/_sandbox/config", control.update_config)
    router.add_get("/_sandbox/quota/{user}", control.quota)
    router.add_post("/_sandbox/quota/{user}/spend", control.spend)
    router.add_post("/_sandbox/quota/{user}/pause", control.pause)
    router.add_post("/_sandbox/tokens", control.register_token)
    router.add_post("/_sandbox/tokens/revoke", control.revoke_tokens)


def run(host: str, port: int, config: SandboxConfig) -> None:
    """Serve until interrupted; prints one line with the URL once listening."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host, port, config))


async def _serve(host: str, port: int, config: SandboxConfig) -> None:
    # Access logging off: at hundreds of requests per second it would dominate the CPU.
    runner = web.AppRunner(make_app(config), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        print(f"Outreach sandbox listening on http://{bound_host}:{bound_port}", flush=True)
        await _until_terminated()
    finally:
        await runner.cleanup()


async def _until_terminated() -> None:
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
