"""A real Redis Cluster on this machine for the tests: ``redis-server`` nodes with
``cluster-enabled`` on free ports in a temporary directory, joined by ``redis-cli --cluster
create``; stopped (and its files removed) by ``stop``."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from functools import partial
from pathlib import Path

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from app.testing.harness import free_port, wait_until

#: What a cluster of the tests needs on the PATH.
BINARIES = ("redis-server", "redis-cli")


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


class LocalCluster:
    """``masters`` primaries (and ``replicas`` per primary) covering every slot."""

    def __init__(self, *, masters: int = 3, replicas: int = 0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        self.ports = [free_port() for _ in range(masters * (1 + replicas))]
        self.replicas = replicas
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """``REDIS_URL`` of the cluster: one node; clients learn the rest from it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        for port in self.ports:
            self._start_node(port)
        for port in self.ports:
            wait_until(partial(self._up, port), timeout_s=10, what=f"cluster node {port}")
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        create = ["redis-cli", "--cluster", "create", *nodes]
        create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=60)
        wait_until(self.ready, timeout_s=30, what="the cluster to report cluster_state:ok")

    def _start_node(self, port: int) -> None:
        cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        cmd += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
        # The bus port defaults to port + 10000, past 65535 for a high free port: pick one too.
        cmd += ["--cluster-port", str(free_port()), "--cluster-node-timeout", "1000"]
        cmd += ["--dir", str(self.dir)]
        cmd += ["--save", "", "--appendonly", "no", "--logfile", f"{self.dir}/{port}.log"]
        self.procs[port] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)

    def _up(self, port: int) -> bool:
        if self.procs[port].poll() is not None:
            log = (self.dir / f"{port}.log").read_text(errors="replace")[-1000:]
            raise RuntimeError(f"cluster node {port} exited:\n{log}")
        return _pings(port)

    def ready(self) -> bool:
        """Every live node sees every slot served, and every primary has its replicas."""
        live = [port for port, proc in self.procs.items() if proc.poll() is None]
        return all(_cluster_ok(port) and _replicated(port, self.replicas) for port in live)

    def client(self) -> RedisCluster:
        return RedisCluster.from_url(self.url)

    def node_of(self, name: str) -> int:
        """Port of the primary serving ``name``'s hash slot (a hash tag: the name itself)."""
        with redis.Redis(host="127.0.0.1", port=self.ports[0]) as node:
            for start, end, primary, *_ in node.execute_command("CLUSTER SLOTS"):
                if start <= key_slot(name.encode()) <= end:
                    return int(primary[1])
        raise LookupError(name)

    def kill(self, port: int) -> None:
        """Kill one node outright (a crash)."""
        self.procs[port].kill()
        self.procs[port].wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pings(port: int) -> bool:
    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as node:
            return bool(node.ping())
    except redis.ConnectionError:
        return False


def _cluster_ok(port: int) -> bool:
    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as node:
            info = node.cluster("INFO")
    except redis.RedisError:
        return False
    return bool(info.get("cluster_state") == "ok")


def _replicated(port: int, replicas: int) -> bool:
    """A replica, or a primary with ``replicas`` replicas streaming from it."""
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as node:
        role = node.execute_command("ROLE")
    return role[0] != b"master" or len(role[2]) >= replicas
