#!/usr/bin/env bash
# Template backup for a deploy that carries a database migration
# (services.<name>.migrations.backup in the config; README, "Approvals that
# go stale, and migrations"). Slipway runs it before the deploy engine, with
# the same SLIPWAY_* variables; if it does not exit 0, the deploy fails and
# the engine is never run.
#
# Out of the box it dumps a PostgreSQL database when told which one
# (BACKUP_DATABASE_URL, and BACKUP_DIR for where the dump goes), and
# otherwise refuses: a migration must never run behind a backup that did
# not happen.
set -euo pipefail

: "${SLIPWAY_SERVICE:?run by Slipway, which sets SLIPWAY_SERVICE}"
: "${SLIPWAY_DEPLOY_ID:?run by Slipway, which sets SLIPWAY_DEPLOY_ID}"

if [[ -z "${BACKUP_DATABASE_URL:-}" || -z "${BACKUP_DIR:-}" ]]; then
    echo "scripts/backup.sh is a template: set BACKUP_DATABASE_URL and BACKUP_DIR for pg_dump, or point" >&2
    echo "services.${SLIPWAY_SERVICE}.migrations.backup.command at your real backup." >&2
    exit 64
fi

dump="${BACKUP_DIR}/${SLIPWAY_SERVICE}-${SLIPWAY_ENVIRONMENT}-deploy-${SLIPWAY_DEPLOY_ID}.dump"
echo "backup before deploy #${SLIPWAY_DEPLOY_ID} (${SLIPWAY_SERVICE} ${SLIPWAY_VERSION}) -> ${dump}"
pg_dump --format=custom --file="$dump" "$BACKUP_DATABASE_URL"
