#!/bin/bash
# What hibernation costs a Region's first write (issue 24): NODES local nodes, then
# `scandium bench --workload wake` splits off REGIONS Regions, lets them all fall asleep,
# and times a write to each sleeping Region against a second write to it, awake.
# Usage: scripts/wake.sh [NODES] [REGIONS]
# Needs target/release/scandium (cargo build --release -p scandium-cli). Uses
# 127.0.0.1:24950-24954 and /tmp/wake-bench.
set -euo pipefail
NODES=${1:-3}
REGIONS=${2:-200}
BIN=${BIN:-target/release/scandium}
DIR=/tmp/wake-bench
rm -rf $DIR; mkdir -p $DIR
ADDRS=(); PIDS=()
for i in $(seq 0 $((NODES - 1))); do ADDRS[$i]=127.0.0.1:$((24950 + i)); done
. "$(dirname "$0")/cluster.sh"
trap 'kill ${PIDS[*]} 2>/dev/null || true' EXIT
for i in $(seq 0 $((NODES - 1))); do start $i; done
# Every node in the placement group and every Region replicated before the bench.
sleep 5
$BIN ctl --pd ${ADDRS[0]} scheduler pause all >/dev/null
$BIN bench --pd ${ADDRS[0]} --workload wake --keys $REGIONS
