#!/bin/bash
# What many Regions cost at rest (issue 24; docs/design/hibernation.md): NODES local nodes,
# REGIONS Regions made by one `ctl split` call (timed), then with no client at all, over
# SECONDS, each node's CPU (utime+stime from /proc/PID/stat, in % of one core) and RSS.
# Usage:
#   scripts/idle-regions.sh [NODES] [REGIONS] [SECONDS]
# BALANCE=off pauses balancing before the split, so that the sample is of Regions at
# rest rather than of leaders still moving (10,000 leaders take many minutes to spread).
# Needs target/release/scandium (cargo build --release -p scandium-cli). Uses
# 127.0.0.1:24900-24904 and /tmp/idle-regions.
set -euo pipefail
NODES=${1:-3}
REGIONS=${2:-1000}
SECONDS_IDLE=${3:-60}
BIN=${BIN:-target/release/scandium}
DIR=/tmp/idle-regions
rm -rf $DIR; mkdir -p $DIR
ADDRS=(); PIDS=()
for i in $(seq 0 $((NODES - 1))); do ADDRS[$i]=127.0.0.1:$((24900 + i)); done
. "$(dirname "$0")/cluster.sh"
# Waits for the nodes to go, so that a run straight after finds the ports free.
trap 'kill ${PIDS[*]} 2>/dev/null || true; wait' EXIT
for i in $(seq 0 $((NODES - 1))); do start $i; done
# Wait until every Region has its replicas (the initial ones and the placement group).
sleep 5
BEFORE=$(region_total)
KEYS=$(split_keys $((REGIONS - BEFORE)))
if [ "${BALANCE:-on}" = off ]; then $BIN ctl --pd ${ADDRS[0]} scheduler pause all >/dev/null; fi
START=$(date +%s.%N)
$BIN ctl --pd ${ADDRS[0]} split $KEYS >/dev/null
END=$(date +%s.%N)
echo "split into $((REGIONS - BEFORE)) more Regions in $(python3 -c "print(f'{$END - $START:.2f}')") s"
for t in $(seq 1 120); do [ "$(region_total)" -ge "$REGIONS" ] && break; sleep 1; done
echo "Regions: $(region_total); stores (id:regions/leaders): $(counts)"
# Let elections, replication of the new Regions and balancing settle.
sleep 20
ticks=$(getconf CLK_TCK)
declare -A FIRST
for i in $(seq 0 $((NODES - 1))); do FIRST[$i]=$(cpu ${PIDS[$i]}); done
sleep $SECONDS_IDLE
for i in $(seq 0 $((NODES - 1))); do
  used=$(( $(cpu ${PIDS[$i]}) - ${FIRST[$i]} ))
  rss=$(awk '/VmRSS/ {print $2}' /proc/${PIDS[$i]}/status)
  raft=$(cat /proc/${PIDS[$i]}/task/*/stat | awk '$2 == "(raft)" {print $14 + $15}')
  engine=$(curl -s ${ADDRS[$i]}/metrics | awk '/^scandium_storage_(memtable|cache)_bytes / {sub("scandium_storage_", "", $1); printf " %s %d MB", $1, $2/1048576}')
  echo "node $i: cpu $(python3 -c "print(f'{100 * $used / $ticks / $SECONDS_IDLE:.2f}')")% of a core, rss $((rss / 1024)) MB ($engine ); raft thread $raft ticks in all"
done
