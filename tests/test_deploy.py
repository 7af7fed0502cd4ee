"""The deployment files parse and only reference what exists: our CLI's subcommands, the
Celery app, files the Dockerfile copies, settings the environment names, routes the probes hit."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from aiohttp import web

from app.cli.main import parse
from app.core.settings import Settings
from tests.support import ROOT, make_settings, settings_env

DEPLOY = ROOT / "deploy"
K8S = sorted((DEPLOY / "k8s").rglob("*.yaml"))
#: Variables read by something other than our settings (Flower reads FLOWER_* itself).
FOREIGN_ENV = {"FLOWER_BASIC_AUTH"}
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def _k8s_docs() -> list[dict[str, Any]]:
    return [d for path in K8S for d in yaml.safe_load_all(path.read_text()) if d]


def _containers() -> Iterator[dict[str, Any]]:
    for doc in _k8s_docs():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        yield from spec.get("containers", [])


@pytest.fixture(scope="module")
def routes() -> set[str]:
    from app.api.app import make_app

    app: web.Application = make_app(make_settings(settings_env("deploycheck", None)))
    return {r.resource.canonical for r in app.router.routes() if r.resource is not None}


def assert_command_exists(argv: list[str]) -> None:
    """``argv`` runs something of ours that exists, with arguments it accepts."""
    if argv[:2] == ["sh", "-c"] or argv[:1] == ["CMD-SHELL"]:
        argv = shlex.split(argv[-1].replace("$$", "$"))
    if argv[:1] == ["CMD"]:
        argv = argv[1:]
    prog, args = argv[0], argv[1:]
    if prog == "outreach-sync":
        ns = parse(args)  # exits (fails the test) on an unknown subcommand or option
        if ns.command == "sandbox":
            assert_command_exists(["python", "-m", "app.sandbox", *ns.sandbox_args])
        if ns.command == "flower":
            from flower.options import options

            for arg in ns.flower_args:
                assert arg.split("=")[0].lstrip("-") in options._options, (argv, arg)
    elif prog == "celery":
        assert args[:2] == ["-A", "workers.celery_app"], argv
        assert args[2] in ("worker", "flower", "inspect"), argv
        if args[2] == "inspect":
            assert args[3] == "ping" and "celery@$HOSTNAME" in args, argv
    elif prog == "python" and args[:2] == ["-m", "app.sandbox"]:
        import argparse

        from app.sandbox.cli import add_arguments

        parser = argparse.ArgumentParser()
        add_arguments(parser)
        parser.parse_args(args[2:])
    elif prog == "python" and args[0] == "-c":
        compile(args[1], "<healthcheck>", "exec")
    elif prog.startswith("redis-"):
        pass  # the Redis image's own programs
    else:
        raise AssertionError(f"unknown command {argv}")


def test_compose_services_run_existing_commands_with_known_settings() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"redis", "api", "worker", "flower"} <= services.keys()
    for name, svc in services.items():
        if "command" in svc:
            assert_command_exists(svc["command"])
        if "healthcheck" in svc:
            assert_command_exists(svc["healthcheck"]["test"])
        unknown = set(svc.get("environment", {})) - SETTINGS_ENV - FOREIGN_ENV
        assert not unknown, f"{name}: {unknown} are not settings"
    # Workers scale with --scale: no fixed name or host port may stop a second replica.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]


def test_compose_redis_persists_with_aof() -> None:
    redis_svc = _compose()["services"]["redis"]
    conf = redis_svc["volumes"][0].split(":")[0]
    text = (DEPLOY / conf).read_text()
    assert "appendonly yes" in text and "maxmemory-policy noeviction" in text
    assert conf.lstrip("./") in redis_svc["command"][-1]


def flower_route(path: str) -> bool:
    """``path`` is one of Flower's own pages (not its catch-all 404)."""
    from flower.urls import handlers

    patterns = [h[0] if isinstance(h, tuple) else h.regex.pattern for h in handlers]
    return any(re.fullmatch(p, path) for p in patterns if p != ".*")


def test_compose_probes_hit_real_routes(routes: set[str]) -> None:
    services = _compose()["services"]
    for name, port, known in (("api", 8080, routes.__contains__), ("flower", 5555, flower_route)):
        probe = " ".join(services[name]["healthcheck"]["test"])
        path = re.search(rf"127\.0\.0\.1:{port}(/\w+)", probe)
        assert path is not None and known(path.group(1)), (name, probe)


def test_kubernetes_manifests_reference_what_exists(routes: set[str]) -> None:
    docs = _k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for needed in [
        ("Deployment", "outreach-sync-api"),
        ("Service", "outreach-sync-api"),
        ("Deployment", "outreach-sync-worker"),
        ("Deployment", "outreach-sync-flower"),
        ("StatefulSet", "outreach-sync-redis"),
        ("ConfigMap", "outreach-sync"),
        ("Secret", "outreach-sync"),
        ("ScaledObject", "outreach-sync-worker"),
    ]:
        assert needed in kinds, needed
    names = {d["metadata"]["name"] for d in docs if d["kind"] in ("ConfigMap", "Secret")}
    secret = next(d for d in docs if d["kind"] == "Secret")
    env_names = set()
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "outreach-sync":
            env_names |= set(d["data"])
    env_names |= set(secret["stringData"])
    for c in _containers():
        if c["image"].startswith("outreach-sync"):
            assert_command_exists(c["command"])
        for ref in c.get("envFrom", []):
            assert next(iter(ref.values()))["name"] in names
        for var in c.get("env", []):
            env_names.add(var["name"])
            if "valueFrom" in var:
                assert var["valueFrom"]["secretKeyRef"]["key"] in secret["stringData"]
        for probe in ("livenessProbe", "readinessProbe"):
            p = c.get(probe, {})
            if "httpGet" in p:
                path = p["httpGet"]["path"]
                assert flower_route(path) if c["name"] == "flower" else path in routes, p
            if "exec" in p and c["image"].startswith("outreach-sync"):
                assert_command_exists(p["exec"]["command"])
    # Every variable the manifests set is a setting (or Flower's own).
    assert not (env_names - SETTINGS_ENV - FOREIGN_ENV)


def test_api_probes_are_healthz_and_readyz() -> None:
    api = next(c for c in _containers() if c["name"] == "api")
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    worker = next(c for c in _containers() if c["name"] == "worker")
    assert "inspect ping" in worker["livenessProbe"]["exec"]["command"][-1]


def test_autoscaling_query_names_a_metric_we_export() -> None:
    scaled = next(d for d in _k8s_docs() if d["kind"] == "ScaledObject")
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    metric = re.search(r"(outreach_sync_\w+)", query)
    assert metric is not None
    prom = (ROOT / "app" / "api" / "prometheus.py").read_text()
    assert metric.group(1).removeprefix("outreach_sync") in prom


def test_dockerfile_copies_existing_files_and_runs_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: no such file"
    assert re.search(r"pip install \.(\s|$)", text), "installs the project without [dev]"
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignore and "!app/" in ignore and "!workers/" in ignore


def test_flower_sees_meaningful_task_names_on_our_broker() -> None:
    from workers.celery_app import app

    app.loader.import_default_modules()  # the worker's includes, as Flower's workers load them
    assert {"outreach_sync.drain", "outreach_sync.ingest"} <= set(app.tasks)
    makefile = (ROOT / "Makefile").read_text()
    assert "-m workers.flower" in makefile


def test_every_yaml_in_deploy_parses() -> None:
    for path in [DEPLOY / "compose.yaml", *K8S]:
        assert list(yaml.safe_load_all(path.read_text())), path


def test_the_kubernetes_configmap_and_example_secret_make_a_service_that_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Filled in as the example says, the manifests' environment passes the startup checks
    (production mode): nothing the pods get is refused, empty optional values included."""
    from cryptography.fernet import Fernet

    from app.ops.startup import startup_problems

    env: dict[str, str] = {}
    for doc in _k8s_docs():
        if doc["kind"] in ("ConfigMap", "Secret") and doc["metadata"]["name"] == "outreach-sync":
            env.update({k: str(v) for k, v in (doc.get("data") or doc.get("stringData")).items()})
    assert env["APP_ENV"] == "production"
    placeholders = {k for k, v in env.items() if v.startswith("<")}
    assert placeholders == {
        "TOKEN_ENCRYPTION_KEY",
        "ADMIN_API_KEY",
        "OUTREACH_CLIENT_ID",
        "OUTREACH_CLIENT_SECRET",
        "FLOWER_BASIC_AUTH",
    }
    env.update(
        TOKEN_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        ADMIN_API_KEY="an-operator-key-of-some-length",
        OUTREACH_CLIENT_ID="client",
        OUTREACH_CLIENT_SECRET="secret",
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert startup_problems(Settings()) == []
