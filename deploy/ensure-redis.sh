#!/usr/bin/env bash
# Make sure the Redis at $REDIS_URL answers; start a local redis-server when none does.
# With --cluster-tools (make test): also make sure redis-server and redis-cli are installed,
# which the Redis Cluster tests run themselves; in CI (CI=true) their absence is an error.
set -euo pipefail
PY="${1:-python3}"
URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"

install_redis() {
  echo "$1; installing Debian's redis-server package (with redis-tools)..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools) >/dev/null
}

if [[ "${2:-}" == "--cluster-tools" ]] && ! { command -v redis-server && command -v redis-cli; } >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    install_redis "redis-server or redis-cli is not installed (the Redis Cluster tests start their own)"
  elif [[ "${CI:-}" == "true" ]]; then
    echo "error: redis-server and redis-cli are needed by the Redis Cluster tests; install Debian's redis-server and redis-tools." >&2
    exit 1
  else
    echo "warning: redis-server or redis-cli is not installed: the Redis Cluster tests will be skipped." >&2
  fi
fi

ping() { "$PY" -c 'import sys, redis; redis.Redis.from_url(sys.argv[1], socket_timeout=2).ping()' "$URL" 2>/dev/null; }

ping && exit 0

host_port=$("$PY" -c 'import sys; from urllib.parse import urlparse; u = urlparse(sys.argv[1]); print(u.hostname or "127.0.0.1", u.port or 6379)' "$URL")
read -r host port <<<"$host_port"
if [[ "$host" != "127.0.0.1" && "$host" != "localhost" && "$host" != "::1" ]]; then
  echo "error: Redis at $URL does not answer, and it is not on this machine, so it cannot be started here." >&2
  exit 1
fi
if ! command -v redis-server >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    install_redis "redis-server is not installed"
  else
    echo "error: no Redis answers at $URL and redis-server is not installed." >&2
    echo "       Install it (e.g. 'apt-get install redis-server') or set REDIS_URL to a running Redis." >&2
    exit 1
  fi
fi
mkdir -p .run/redis
echo "no Redis answered at $URL; starting a local redis-server on port $port (data in .run/redis)" >&2
redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$PWD/.run/redis" \
  --appendonly yes --logfile "$PWD/.run/redis/redis.log"
for _ in $(seq 50); do ping && exit 0; sleep 0.1; done
echo "error: started redis-server but it does not answer; see .run/redis/redis.log" >&2
exit 1
