#!/usr/bin/env bash
# Start Debian's PostgreSQL cluster on 127.0.0.1 and create the test role and
# database. Safe to run twice.
set -euo pipefail
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
cluster=$(pg_lsclusters --no-header | awk -v v="$version" '$1 == v {print $2; exit}')
if [ -z "$cluster" ]; then
    pg_createcluster "$version" main >/dev/null
    cluster=main
fi
conf="/etc/postgresql/$version/$cluster/postgresql.conf"
sed -i "s/^#\?listen_addresses.*/listen_addresses = '127.0.0.1'/" "$conf"
pg_ctlcluster "$version" "$cluster" start 2>/dev/null || true
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='harness'\"" | grep -q 1 \
    || su postgres -c "psql -qc \"CREATE ROLE harness LOGIN PASSWORD 'harness'\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='harness_test'\"" | grep -q 1 \
    || su postgres -c "createdb -O harness harness_test"
