#!/bin/bash
# 3 -> 5 nodes with GiB of data under load (docs/scale-out.md): loads GIB GiB into three
# nodes (default settings: Regions split past 96 MiB into 64 MiB pieces), measures raw put
# latency through tikv-client in steady state, then starts two more nodes while the same
# load runs, and reports how long until every Up store's replica and leader counts are
# within one of the mean, when the last operator runs and whether two quiet minutes follow, and the
# load's latency and errors during the moves. Then it removes the fifth node's store and
# reports the same for the four left (drained to a tombstone, counts within one of the
# mean, two quiet minutes). Usage:
#   scripts/scale-out.sh [GiB]
# REMOVE=0 skips the removal.
# Needs target/release/scandium (cargo build --release -p scandium-cli). Uses
# 127.0.0.1:23690-23694 and /tmp/scale-out.
set -euo pipefail
GIB=${1:-2}
REMOVE=${REMOVE:-1}
# The load during the moves lasts this long from the join: through the removal too.
MOVING=$([ "$REMOVE" = 1 ] && echo 900 || echo 420)
BIN=${BIN:-target/release/scandium}
DIR=/tmp/scale-out
VALUE=16384
KEYS=$((GIB * 1024 * 1024 * 1024 / VALUE))
rm -rf $DIR; mkdir -p $DIR
ADDRS=(127.0.0.1:23690 127.0.0.1:23691 127.0.0.1:23692 127.0.0.1:23693 127.0.0.1:23694)
PIDS=()
. "$(dirname "$0")/cluster.sh"
trap 'kill ${PIDS[*]} 2>/dev/null || true' EXIT
for i in 0 1 2; do start $i; done
balanced() {
  curl -s ${ADDRS[0]}/pd/api/v1/stores | python3 -c "import json,sys
s=[x for x in json.load(sys.stdin)['stores'] if x['store']['state_name']=='Up']
r=[x['status']['region_count'] for x in s]; l=[x['status']['leader_count'] for x in s]
ok=lambda v: all(abs(x-sum(v)/len(v))<=1 for x in v)
sys.exit(0 if len(s)==$1 and ok(r) and ok(l) else 1)"
}
# MiB of Regions each Up store holds (their leaders' approximate sizes): what replica
# balance evens out, with counts.
weights() {
  curl -s "${ADDRS[0]}/pd/api/v1/regions?limit=10000" | python3 -c "import json,sys
w={}
for r in json.load(sys.stdin)['regions']:
  for p in r['peers']: w[p['store_id']]=w.get(p['store_id'],0)+r.get('approximate_size_bytes',0)
print(' '.join(f'{s}:{b>>20}' for s,b in sorted(w.items())))"
}
operators() { $BIN ctl --json --pd ${ADDRS[0]} operators | python3 -c "import json,sys; print(json.load(sys.stdin)['count'])"; }
echo "loading $KEYS keys of $VALUE bytes ($GIB GiB)"
S=$(date +%s)
$BIN bench --pd ${ADDRS[0]} --workload get --keys $KEYS --value-size $VALUE --clients 16 --duration 1 >$DIR/load.txt 2>&1
echo "loaded in $(( $(date +%s) - S )) s; waiting for splits and balance on three nodes"
for t in $(seq 1 600); do
  REGIONS=$(curl -s "${ADDRS[0]}/pd/api/v1/regions?limit=10000" | python3 -c "import json,sys
r=json.load(sys.stdin)['regions']
big=[x for x in r if x.get('approximate_size_bytes',0) > 96*1048576]
print(len(r), len(big), max(x.get('approximate_size_bytes',0) for x in r)//1048576)")
  set -- $REGIONS
  [ "$2" = 0 ] && balanced 3 && break
  sleep 2
done
echo "Regions: $1, past region_max_size: $2, largest: $3 MiB; stores (id:replicas/leaders): $(counts)"
du -sh $DIR/d0
PD=${ADDRS[0]},${ADDRS[1]},${ADDRS[2]}
# The load goes to keyspace DEFAULT (API V2): in API V1 its keys would be the loaded
# ones, and its 1 KiB values would replace most of the 16 KiB ones (a run of the first
# version of this script ended with 646 MiB of its 2 GiB).
$BIN bench --pd $PD --keyspace DEFAULT --workload put --value-size 1024 --clients 16 --duration 30 >$DIR/steady.txt 2>&1
echo "steady: $(grep -E '^(ops|latency)' $DIR/steady.txt | tr '\n' ' ')"
$BIN bench --pd $PD --keyspace DEFAULT --workload put --value-size 1024 --clients 16 --duration $MOVING >$DIR/moving.txt 2>&1 &
BENCH=$!
sleep 5
S=$(date +%s)
start 3; start 4
echo "two nodes joined"
until balanced 5; do
  [ $(( $(date +%s) - S )) -gt 400 ] && { echo "not balanced within 400 s: $(counts); MiB per store: $(weights)"; break; }
  sleep 2
done
echo "balanced after $(( $(date +%s) - S )) s: $(counts); MiB per store: $(weights)"
# Samples the operators every 5 s until none has run for 120 s (at most 300 s): the
# target asks for counts within one of the mean and then two minutes with no operator,
# so this reports when the last operator was seen and whether the counts were still even
# after the quiet two minutes.
quiet() {
  local Q=$(date +%s) LAST=$(date +%s) MOVES=0 N
  while [ $(( $(date +%s) - LAST )) -lt 120 ] && [ $(( $(date +%s) - Q )) -lt 300 ]; do
    N=$(operators)
    if [ "$N" != 0 ]; then
      MOVES=$((MOVES + 1)); LAST=$(date +%s); echo "  operators running: $N at +$(( LAST - Q )) s"
    fi
    sleep 5
  done
  echo "samples with operators running: $MOVES, the last at +$(( LAST - Q )) s; none in the" \
    "$(( $(date +%s) - LAST )) s after; still within one of the mean: $(balanced $1 && echo yes || echo NO);" \
    "stores: $(counts); MiB per store: $(weights)"
}
quiet 5
if [ "$REMOVE" = 1 ]; then
  SID=$(curl -s ${ADDRS[0]}/pd/api/v1/stores | python3 -c "import json,sys
print([x['store']['id'] for x in json.load(sys.stdin)['stores'] if x['store']['address']=='${ADDRS[4]}'][0])")
  tombstone() {
    curl -s ${ADDRS[0]}/pd/api/v1/stores | python3 -c "import json,sys
s=[x for x in json.load(sys.stdin)['stores'] if x['store']['id']==$SID]
sys.exit(0 if s and s[0]['store']['state_name']=='Tombstone' else 1)"
  }
  S=$(date +%s)
  $BIN ctl --pd ${ADDRS[0]} store remove $SID >/dev/null
  echo "store $SID (${ADDRS[4]}) removed"
  until tombstone && balanced 4; do
    [ $(( $(date +%s) - S )) -gt 400 ] && { echo "not drained and balanced within 400 s: $(counts)"; break; }
    sleep 2
  done
  echo "drained to a tombstone and balanced after $(( $(date +%s) - S )) s: $(counts); MiB per store: $(weights)"
  quiet 4
fi
echo "waiting for the load to end ($MOVING s from the join)"
wait $BENCH || true
echo "during the moves: $(grep -E '^(ops|latency)' $DIR/moving.txt | tr '\n' ' ')"
# What the nodes saw while the load ran: leaders that lost their quorum, slow fsyncs of
# the Raft log, ingestions that held fjall's journal lock, and stalled writes.
for i in 0 1 2 3 4; do
  M=$(curl -s ${ADDRS[$i]}/metrics || true)
  FSYNC=$(echo "$M" | python3 -c "import sys,re
b={}
for l in sys.stdin:
  m=re.match(r'scandium_raft_fsync_duration_seconds_bucket\{le=\"([^\"]+)\"\} (\S+)',l)
  if m: b[m.group(1)]=float(m.group(2))
tot=b.get('+Inf',0); fast=max([v for k,v in b.items() if k!='+Inf' and float(k)<=0.1] or [0])
print(f'{int(tot)} fsyncs, {int(tot-fast)} over 100 ms')" 2>/dev/null || echo "no metrics")
  echo "node $i: quorum lost $(grep -c 'quorum is not active' $DIR/n$i.log || true) times;" \
    "journal lock held $(grep -c "held the journal" $DIR/n$i.log || true) times; $FSYNC;" \
    "$(echo "$M" | grep -E '^scandium_(storage_slow_writes_total|raft_messages_dropped_total)' | tr '\n' ' ')";
  echo "  snapshots installed: $(grep -c 'wrote a snapshot' $DIR/n$i.log || true)"
done
