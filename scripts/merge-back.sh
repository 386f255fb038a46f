#!/bin/bash
# Regions merging back after deletes (issue 24's target: after 2 GB written and 90% of it
# deleted, the Region count returns to within twice what the remaining data needs within
# 30 minutes). NODES local nodes with the default settings; GB of 4 KiB values written
# through `scandium bench`'s preload (keys bench000000000000, ...), Regions split as they
# grow; then the first 90% of the keys deleted with one `kv delete-range`; then every
# 30 s, up to MINUTES, the Region count and the data the Regions report.
# Usage:
#   scripts/merge-back.sh [GB] [MINUTES] [NODES]
# Needs target/release/scandium (cargo build --release -p scandium-cli). Uses
# 127.0.0.1:24950-24954 and /tmp/merge-back.
set -euo pipefail
GB=${1:-2}
MINUTES=${2:-30}
NODES=${3:-3}
BIN=${BIN:-target/release/scandium}
DIR=/tmp/merge-back
VALUE=4096
KEYS=$(( GB * 1024 * 1024 * 1024 / VALUE ))
rm -rf $DIR; mkdir -p $DIR
ADDRS=(); PIDS=()
for i in $(seq 0 $((NODES - 1))); do ADDRS[$i]=127.0.0.1:$((24950 + i)); done
. "$(dirname "$0")/cluster.sh"
trap 'kill ${PIDS[*]} 2>/dev/null || true' EXIT
for i in $(seq 0 $((NODES - 1))); do start $i; done
# Regions and the bytes they report (the keyspace DEFAULT's edges make four Regions of
# their own, empty here: the count includes them).
regions() {
  curl -s "${ADDRS[0]}/pd/api/v1/regions?limit=10000" | python3 -c "import json,sys
d=json.load(sys.stdin); r=d['regions']
print(d['total'], sum(x.get('approximate_size', 0) for x in r))"
}
sleep 5
START=$(date +%s)
$BIN bench --pd ${ADDRS[0]} --workload get --keys $KEYS --value-size $VALUE --clients 1 --duration 1 >$DIR/bench.txt 2>&1
echo "wrote $GB GiB ($KEYS keys of $VALUE bytes) in $(( $(date +%s) - START )) s"
# Let the split checks catch up (every 10 s), and the counts settle.
last=""; for t in $(seq 1 30); do now=$(regions); [ "$now" = "$last" ] && break; last=$now; sleep 10; done
echo "before the deletes: Regions, MiB: $(regions)"
CUT=$(printf "bench%012d" $(( KEYS * 9 / 10 )))
START=$(date +%s)
$BIN kv --pd ${ADDRS[0]} delete-range bench000000000000 $CUT >/dev/null
echo "deleted 90% of the keys in $(( $(date +%s) - START )) s"
LEFT_MIB=$(( GB * 1024 / 10 ))
NEED=$(( (LEFT_MIB + 63) / 64 + 4 ))
echo "the $LEFT_MIB MiB left need $(( NEED - 4 )) Regions of 64 MiB, plus the 4 of the keyspace edges: target <= $(( 2 * NEED - 4 ))"
for t in $(seq 0 $(( MINUTES * 2 ))); do
  read -r count mib <<<"$(regions)"
  echo "$(( $(date +%s) - START )) s: $count Regions, $mib MiB reported"
  if [ "$count" -le $(( 2 * NEED - 4 )) ]; then echo "target met after $(( $(date +%s) - START )) s"; exit 0; fi
  sleep 30
done
echo "target not met within $MINUTES minutes"
exit 1
