# Sourced by the benchmark scripts: a PostgreSQL 15 cluster of their own under a work
# directory (initdb on first use, a unix socket there, no TCP; as the postgres user when run
# as root, which PostgreSQL refuses to run as).
PG_BIN=/usr/lib/postgresql/15/bin
as_postgres=()
[ "$(id -u)" = 0 ] && as_postgres=(runuser -u postgres --)

postgres_start() {  # work-dir: the cluster in work-dir/pg, running
  local work=$1
  [ -x "$PG_BIN/initdb" ] || { echo "$0: PostgreSQL 15 is missing: run scripts/setup" >&2; exit 1; }
  mkdir -p "$work/pg"
  if [ ${#as_postgres[@]} -gt 0 ]; then
    chmod 711 "$work"  # the postgres user passes through to its own directory
    chown postgres: "$work/pg"
  fi
  "${as_postgres[@]}" "$PG_BIN/initdb" -D "$work/pg/data" -U mxvoip --auth=trust -E UTF8 > /dev/null
  "${as_postgres[@]}" "$PG_BIN/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w \
    -o "-c listen_addresses='' -k $work/pg" start > /dev/null
}

postgres_stop() {  # work-dir
  [ -d "$1/pg/data" ] && "${as_postgres[@]}" "$PG_BIN/pg_ctl" -D "$1/pg/data" -m fast -w stop > /dev/null 2>&1
  return 0
}

# Writes ./bench.yaml: bench/bench.yaml with the database of `backend` (sqlite, or postgres
# on the cluster of work-dir, database mxvoip, created empty).
bench_config() {  # template backend work-dir
  local template=$1 backend=$2 work=$3
  sed '/^database:/,/^  synchronous:/d' "$template" > bench.yaml
  case $backend in
    sqlite) printf 'database: {backend: sqlite, path: bench.db, synchronous: full}\n' >> bench.yaml ;;
    postgres)
      PGOPTIONS="-c client_min_messages=warning" "$PG_BIN/dropdb" --if-exists -h "$work/pg" -U mxvoip mxvoip
      "$PG_BIN/createdb" -h "$work/pg" -U mxvoip mxvoip
      printf 'database: {backend: postgres, dsn: "host=%s user=mxvoip dbname=mxvoip"}\n' "$work/pg" >> bench.yaml ;;
    *) echo "$0: unknown backend $backend (sqlite or postgres)" >&2; exit 2 ;;
  esac
}
