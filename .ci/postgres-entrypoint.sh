#!/bin/sh
# Entrypoint of stack-local/postgres (built by .ci/docker-setup), compatible with the official
# image where tests rely on it: POSTGRES_USER (default postgres), POSTGRES_PASSWORD (none means
# trust), POSTGRES_DB (default: the user's name), POSTGRES_INITDB_ARGS (e.g. --no-sync, which a
# throwaway test cluster wants). The cluster is made on first start, as the postgres user
# (PostgreSQL refuses root), and the server listens on TCP 0.0.0.0:5432.
# `docker run IMAGE -c fsync=off` passes server settings, like the official image.
set -eu

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
  exec "$@"  # e.g. `docker run -it IMAGE sh`
fi
shift

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /run/postgresql
  chown postgres:postgres "$PGDATA" /run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" postgres "$@"
fi

user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  auth=trust
  pwopt=
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    auth=scram-sha-256
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    pwopt=--pwfile=$pwfile
  fi
  # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of words, as in the official image
  initdb -D "$PGDATA" -U "$user" -E UTF8 --locale=C --auth-local=trust --auth-host="$auth" \
    ${pwopt:+"$pwopt"} ${POSTGRES_INITDB_ARGS:-} >/dev/null
  [ -z "$pwopt" ] || rm -f "$pwfile"
  # initdb only lets in 127.0.0.1; clients come through docker's port mapping from elsewhere.
  echo "host all all all $auth" >>"$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    echo "CREATE DATABASE \"$db\";" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  echo "docker-entrypoint: initialized $PGDATA for user $user, database $db ($auth)"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
