#!/bin/bash
# What happens, with default settings, to REGIONS empty Regions made by one `ctl split`
# on 3 local nodes (issue 24; docs/design/hibernation.md): every 15 s for MINUTES, each
# node's CPU over the interval (% of one core), the operators running, and the stores'
# counts (id:regions/leaders). The leaders spread, the nodes come to rest, and once the
# split is `split_merge_interval` (5 min) old the empty Regions merge.
# Usage:
#   scripts/regions-lifecycle.sh [REGIONS] [MINUTES]
# Needs target/release/scandium. Uses 127.0.0.1:24900-24902 and /tmp/idle-regions.
set -uo pipefail
REGIONS=${1:-10000}
MINUTES=${2:-12}
BIN=${BIN:-target/release/scandium}
DIR=/tmp/idle-regions
rm -rf $DIR; mkdir -p $DIR
ADDRS=(); PIDS=()
for i in 0 1 2; do ADDRS[$i]=127.0.0.1:$((24900 + i)); done
. "$(dirname "$0")/cluster.sh"
# Waits for the nodes to go, so that a run straight after finds the ports free.
trap 'kill ${PIDS[*]} 2>/dev/null || true; wait' EXIT
for i in 0 1 2; do start $i; done
# Wait until every Region has its replicas (the initial ones and the placement group).
sleep 5
$BIN ctl --pd ${ADDRS[0]} split $(split_keys $((REGIONS - $(region_total)))) >/dev/null
ticks=$(getconf CLK_TCK)
# The operators, as the node that leads placement lists them (the others answer nothing).
operators() {
  for i in 0 1 2; do
    curl -s ${ADDRS[$i]}/pd/api/v1/operators | python3 -c "import json,sys
d=json.load(sys.stdin)
kinds=sorted(set(o['kind'].split(' ')[0] for o in d['operators']))
print(d['count'], ','.join(kinds))" 2>/dev/null && return
  done
}
declare -A LAST
for i in 0 1 2; do LAST[$i]=$(cpu ${PIDS[$i]}); done
for t in $(seq 1 $((MINUTES * 4))); do
  sleep 15
  line="t=$((t * 15))s cpu"
  for i in 0 1 2; do
    c=$(cpu ${PIDS[$i]})
    line="$line $(( (c - LAST[$i]) * 100 / (15 * ticks) ))%"
    LAST[$i]=$c
  done
  echo "$line; operators $(operators); stores $(counts)"
done
