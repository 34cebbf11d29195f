#!/bin/sh
# Fails when a library that must stay free of I/O includes, even transitively, a header of
# Asio, Beast, GStreamer, SQLite or libpq. Reads the dependencies the compiler reported to
# Ninja (`ninja -t deps`), so it sees every header actually included.
# usage: check_headers.sh BUILD_DIR OBJECT_PREFIX...   (e.g. libs/proto/CMakeFiles/mxvoip_proto.dir/)
build=$1
shift
command -v ninja > /dev/null || { echo "ninja is missing: run scripts/setup" >&2; exit 1; }
ninja -C "$build" -t deps > "$build/boundary-deps.txt" || exit 1
awk -v prefixes="$*" '
  BEGIN { n = split(prefixes, p, " "); bad = 0; units = 0 }
  /^[^ \t]/ {
    target = $1; sub(/:$/, "", target); mine = 0
    for (i = 1; i <= n; i++) if (index(target, p[i]) == 1) mine = 1
    if (mine) units++
    next
  }
  mine && /boost\/asio|boost\/beast|\/gst\/|gstreamer|sqlite3\.h|libpq-fe\.h/ {
    gsub(/^[ \t]+/, ""); print "forbidden: " target " includes " $0 > "/dev/stderr"; bad = 1
  }
  END {
    if (units == 0) { print "no compiled units under " prefixes " (build first)" > "/dev/stderr"; exit 1 }
    print units " translation units checked"; exit bad
  }' "$build/boundary-deps.txt"
