#!/bin/bash
# Copies one large Region to a joining node and reports the receiver's memory and the
# transfer's rate (docs/scale-out.md). Usage:
#   scripts/snapshot-move.sh [GiB] [snapshot_max_bytes_per_sec]
# Needs target/release/scandium (cargo build --release -p scandium-cli). Uses
# 127.0.0.1:23790-23791 and /tmp/snapshot-move.
set -euo pipefail
GIB=${1:-1}
PACE=${2:-104857600}
BIN=${BIN:-target/release/scandium}
DIR=/tmp/snapshot-move
VALUE=16384
KEYS=$((GIB * 1024 * 1024 * 1024 / VALUE))
rm -rf $DIR; mkdir -p $DIR
cat > $DIR/node.toml <<TOML
region_split_size = 68719476736
region_max_size = 68719476736
region_split_keys = 1099511627776
region_max_keys = 1099511627776
snapshot_max_bytes_per_sec = $PACE
TOML
$BIN server --config $DIR/node.toml --data-dir $DIR/d1 --addr 127.0.0.1:23790 >$DIR/n1.log 2>&1 & N1=$!
trap 'kill $N1 ${N2:-} 2>/dev/null || true' EXIT
for i in $(seq 1 100); do curl -s 127.0.0.1:23790/health >/dev/null && break; sleep 0.1; done
echo "loading $KEYS keys of $VALUE bytes ($GIB GiB) into one Region"
$BIN bench --pd 127.0.0.1:23790 --workload get --keys $KEYS --value-size $VALUE --clients 16 --duration 1 >$DIR/load.txt 2>&1
region_json() { curl -s '127.0.0.1:23790/pd/api/v1/regions?limit=10000'; }
BIG=$(region_json | python3 -c 'import json,sys; r=max(json.load(sys.stdin)["regions"], key=lambda r: r["approximate_size_bytes"]); print(r["id"], r["approximate_size_bytes"], r["approximate_keys"])')
echo "largest Region (id, bytes, keys): $BIG"
ID=${BIG%% *}
$BIN server --config $DIR/node.toml --data-dir $DIR/d2 --addr 127.0.0.1:23791 --join 127.0.0.1:23790 >$DIR/n2.log 2>&1 & N2=$!
for i in $(seq 1 100); do curl -s 127.0.0.1:23791/health >/dev/null && break; sleep 0.1; done
START=$(date +%s.%N)
BASE=$(awk '/VmRSS/ {print $2}' /proc/$N2/status)
echo "receiver RSS at start: $((BASE / 1024)) MiB"
(while kill -0 $N2 2>/dev/null; do
  ENGINE=$(curl -s 127.0.0.1:23791/metrics | awk '/^scandium_storage_(memtable|cache)_bytes / {printf "%s=%d ", $1, $2/1048576}')
  echo "$(date +%s.%N) $(($(awk '/VmRSS/ {print $2}' /proc/$N2/status) / 1024)) $ENGINE"
  sleep 0.5
done) > $DIR/rss.txt 2>/dev/null &
while :; do
  VOTERS=$(region_json | python3 -c "import json,sys
r=[r for r in json.load(sys.stdin)['regions'] if r['id']==$ID][0]
print(sum(1 for p in r['peers'] if p['role_name']=='Voter'))")
  [ "$VOTERS" = 2 ] && break
  sleep 0.2
done
VOTER=$(date +%s.%N)
# Promotion follows the snapshot's Raft state, not its data: the move is done when the
# receiver has installed the data and deleted the staged file.
while ls $DIR/d2/snapshots/*.snap >/dev/null 2>&1; do sleep 0.1; done
END=$(date +%s.%N)
echo "a voter after $(python3 -c "print(f'{$VOTER-$START:.1f}')") s, the data in after $(python3 -c "print(f'{$END-$START:.1f}')") s"
PEAK=$(awk '/VmHWM/ {print $2}' /proc/$N2/status)
SECS=$(python3 -c "print(f'{$END-$START:.1f}')")
BYTES=${BIG#* }; BYTES=${BYTES%% *}
echo "Region $ID on the new node, installed after $SECS s: $(python3 -c "print(f'{$BYTES/1048576/($END-$START):.0f}')") MiB/s of its approximate size"
echo "receiver RSS peak: $((PEAK / 1024)) MiB (+$(((PEAK - BASE) / 1024)) MiB over its start)"
du -sh $DIR/d1 $DIR/d2
# The new replica must hold exactly what the leader holds.
$BIN ctl --pd 127.0.0.1:23790 check-consistency | awk -v id=$ID '$1 == id || NR == 1'
