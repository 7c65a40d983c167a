#!/usr/bin/env bash
# Installs what the deployment suite (tests/deployment) needs, idempotently: Debian's PostgreSQL
# server and Redis. The suite starts its own throwaway instances on 127.0.0.1 (no system service
# is used), so only the binaries matter. Fails loudly: the suite never passes without them.
set -euo pipefail

have_postgres() { ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; }
have_redis() { command -v redis-server >/dev/null 2>&1; }

if ! have_postgres || ! have_redis; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "install-deployment: installing postgresql and redis-server from Debian's packages"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        postgresql redis-server >/dev/null
fi

if ! have_postgres || ! have_redis; then
    echo "install-deployment: PostgreSQL or Redis is still missing after apt-get install;" \
        "the deployment suite cannot run (it is never skipped)" >&2
    exit 1
fi
echo "install-deployment: $(ls -d /usr/lib/postgresql/*/bin/postgres | head -1), $(redis-server --version | cut -d' ' -f1-3)"
