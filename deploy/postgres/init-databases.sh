#!/bin/sh
# Runs once, when the postgres container initialises an empty data volume
# (/docker-entrypoint-initdb.d). Creates the application role and database, and the
# role and databases Temporal's auto-setup image migrates (its own `create` step
# tolerates databases that already exist).
# Plain `set -e`: the entrypoint sources (rather than runs) the file if it lost its exec bit.
set -e

psql -v ON_ERROR_STOP=1 \
  --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v dealflow_password="${DEALFLOW_DB_PASSWORD:?}" \
  -v temporal_password="${TEMPORAL_DB_PASSWORD:?}" <<'SQL'
CREATE ROLE dealflow LOGIN PASSWORD :'dealflow_password';
CREATE DATABASE dealflow OWNER dealflow;

CREATE ROLE temporal LOGIN CREATEDB PASSWORD :'temporal_password';
CREATE DATABASE temporal OWNER temporal;
CREATE DATABASE temporal_visibility OWNER temporal;
SQL
