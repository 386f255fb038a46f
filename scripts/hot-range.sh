#!/bin/bash
# One hot key range under a uniform client (docs/scale-out.md): three nodes on this
# machine, KEYS keys of 1 KiB preloaded (one Region at first), then `scandium bench`
# reads them uniformly at random for MINUTES minutes through tikv-client. Load-based
# split and hot-Region balancing should spread the range's load: every 30 s the script
# prints each node's CPU over the last 30 s (from /proc), its distance from the mean,
# the Regions and leaders per store, and the first time every node was within 20% of the
# mean. Usage:
#   scripts/hot-range.sh [KEYS] [MINUTES]
# Needs target/release/scandium (cargo build --release -p scandium-cli). Uses
# 127.0.0.1:23790-23792 and /tmp/hot-range.
set -euo pipefail
KEYS=${1:-20000}
MINUTES=${2:-10}
BIN=${BIN:-target/release/scandium}
DIR=/tmp/hot-range
rm -rf $DIR; mkdir -p $DIR
ADDRS=(127.0.0.1:23790 127.0.0.1:23791 127.0.0.1:23792)
PIDS=()
. "$(dirname "$0")/cluster.sh"
trap 'kill ${PIDS[*]} 2>/dev/null || true' EXIT
for i in 0 1 2; do start $i; done
# CPU ticks (user + system) a process has used.
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
# Wait for three voters everywhere (the first node's Regions replicated).
for t in $(seq 1 300); do
  curl -s ${ADDRS[0]}/pd/api/v1/stores | python3 -c "import json,sys
s=json.load(sys.stdin)['stores']
sys.exit(0 if len(s)==3 and len({x['status']['region_count'] for x in s})==1 else 1)" && break
  sleep 1
done
PD=${ADDRS[0]},${ADDRS[1]},${ADDRS[2]}
echo "preloading $KEYS keys; stores (id:regions/leaders): $(counts)"
$BIN bench --pd $PD --workload get --keys $KEYS --value-size 1024 --clients 32 --duration $((MINUTES * 60)) >$DIR/bench.txt 2>&1 &
BENCH=$!
HZ=$(getconf CLK_TCK)
S=$(date +%s); MET=""
declare -a BEFORE
for i in 0 1 2; do BEFORE[$i]=$(ticks ${PIDS[$i]}); done
while kill -0 $BENCH 2>/dev/null; do
  sleep 30
  kill -0 $BENCH 2>/dev/null || break
  CPU=()
  for i in 0 1 2; do
    NOW=$(ticks ${PIDS[$i]}); CPU[$i]=$(( (NOW - BEFORE[$i]) * 100 / HZ / 30 )); BEFORE[$i]=$NOW
  done
  LINE=$(python3 -c "
c=[${CPU[0]},${CPU[1]},${CPU[2]}]; m=sum(c)/3
d=[abs(x-m)/m*100 if m else 0 for x in c]
print(' '.join(f'{x}%' for x in c), f'mean {m:.0f}%, furthest {max(d):.0f}% off', 'OK' if max(d)<=20 else '')")
  T=$(( $(date +%s) - S ))
  echo "+${T}s CPU per node: $LINE; stores: $(counts)"
  if [ -z "$MET" ] && [[ "$LINE" == *OK ]]; then MET=$T; fi
done
echo "first within 20% of the mean: ${MET:-never} s after the load began"
echo "bench: $(grep -E '^(ops|latency)' $DIR/bench.txt | tr '\n' ' ')"
