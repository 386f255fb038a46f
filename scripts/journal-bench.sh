#!/bin/bash
# What the node's own journal bound costs writes (docs/performance.md): one fresh node
# with `journal_max_bytes` at its default (24 MiB: the node flushes every memtable each
# time the journal passes it) and one at 512 MiB (fjall's own bound, fjall's default
# size), in turn, ROUNDS times; each takes `scandium bench` raw puts of 1 KiB values
# through tikv-client for SECONDS seconds. Prints each run and the ratio of each pair.
# Usage:
#   scripts/journal-bench.sh [ROUNDS] [SECONDS]
# Needs target/release/scandium. Uses 127.0.0.1:24950 and /tmp/journal-bench.
set -euo pipefail
ROUNDS=${1:-3}
SECONDS_EACH=${2:-20}
BIN=${BIN:-target/release/scandium}
DIR=/tmp/journal-bench
rm -rf $DIR; mkdir -p $DIR
run() { # BYTES
  rm -rf $DIR/d; printf 'journal_max_bytes = %s\n' "$1" >$DIR/scandium.toml
  $BIN server --config $DIR/scandium.toml --data-dir $DIR/d --addr 127.0.0.1:24950 >$DIR/server.log 2>&1 &
  local pid=$!
  sleep 2
  $BIN bench --pd 127.0.0.1:24950 --workload put --value-size 1024 --clients 32 \
    --duration $SECONDS_EACH --server-pid $pid 2>/dev/null | grep -E '^(ops|latency|server)' | tr '\n' ' '
  kill $pid; wait $pid 2>/dev/null || true
}
for round in $(seq 1 $ROUNDS); do
  B=$(run $((24 << 20))); F=$(run $((512 << 20)))
  echo "round $round, 24 MiB (default): $B"
  echo "round $round, 512 MiB (fjall):   $F"
  BO=$(echo "$B" | grep -oE '^ops=[0-9]+' | cut -d= -f2); FO=$(echo "$F" | grep -oE '^ops=[0-9]+' | cut -d= -f2)
  echo "round $round: default / fjall's = $(python3 -c "print(f'{$BO/$FO:.3f}')")"
done
