#!/usr/bin/env bash
# Make sure the Redis at $REDIS_URL answers; start a local redis-server when none does.
set -euo pipefail
PY="${1:-python3}"
URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"

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
    echo "redis-server is not installed; installing Debian's redis-server package..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null
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
