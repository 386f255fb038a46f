#!/bin/bash
# Failover as a tikv-client user sees it (docs/scale-out.md): three nodes, leaders spread by
# the balancer; `scandium bench` writes (or runs transactions) through tikv-client while
# each node in turn is killed with SIGKILL and restarted 6 s later. Reports bench's
# errors and its longest request (the longest write stall a client saw), and how long
# each restarted node took to be `Up` again in placement's view (asked of another node:
# the store heartbeats again; the issue measured a node still `Disconnected` 7 s after
# it came back). Usage:
#   scripts/failover.sh [put|txn|tso] [seconds between kills]
# (tso: clients only ask for timestamps; bench's longest_gap_us is the longest time a
# client went without one.)
# Needs target/release/scandium (cargo build --release -p scandium-cli). Uses
# 127.0.0.1:23890-23892 and /tmp/failover.
set -euo pipefail
WORKLOAD=${1:-put}
EVERY=${2:-12}
# Seconds a killed node stays down: past the 5 s after which placement counts a store
# Disconnected, so that its return is measured.
DOWN=6
BIN=${BIN:-target/release/scandium}
DIR=/tmp/failover
rm -rf $DIR; mkdir -p $DIR
ADDRS=(127.0.0.1:23890 127.0.0.1:23891 127.0.0.1:23892)
PIDS=()
start() {
  local i=$1 join=""
  [ "$i" -gt 0 ] && join="--join ${ADDRS[0]},${ADDRS[1]},${ADDRS[2]}"
  $BIN server --data-dir $DIR/d$i --addr ${ADDRS[$i]} $join >>$DIR/n$i.log 2>&1 &
  PIDS[$i]=$!
}
# Whether node $1's store is Up, as node $2 sees it.
up() {
  curl -s "${ADDRS[$2]}/pd/api/v1/stores" | python3 -c "import json,sys
s=[x for x in json.load(sys.stdin)['stores'] if x['store']['address']=='${ADDRS[$1]}']
sys.exit(0 if s and s[0]['store']['state_name']=='Up' else 1)" 2>/dev/null
}
trap 'kill ${PIDS[*]} 2>/dev/null || true' EXIT
for i in 0 1 2; do start $i; sleep 0.5; done
# Wait until every Region has three voters and leaders are spread (each node leads one).
for t in $(seq 1 300); do
  curl -s ${ADDRS[0]}/pd/api/v1/stores | python3 -c "import json,sys
s=json.load(sys.stdin)['stores']
sys.exit(0 if len(s)==3 and all(x['status']['leader_count']>0 for x in s) else 1)" 2>/dev/null && break
  sleep 0.2
done
curl -s ${ADDRS[0]}/pd/api/v1/stores | python3 -c "import json,sys
print('leaders per store:', [(x['store']['id'], x['status']['leader_count']) for x in json.load(sys.stdin)['stores']])"
# PAUSE_LEADERS=1 stops leader balancing once the leaders are spread, to tell the
# failover's own errors from those of leaders moved back to a restarted node.
[ "${PAUSE_LEADERS:-0}" = 1 ] && $BIN ctl --pd ${ADDRS[0]} scheduler pause leaders
DURATION=$((EVERY * 3 + 5))
$BIN bench --pd ${ADDRS[0]},${ADDRS[1]},${ADDRS[2]} --workload $WORKLOAD --clients 16 --duration $DURATION >$DIR/bench.txt 2>&1 &
BENCH=$!
for i in 0 1 2; do
  sleep $((EVERY - DOWN))
  kill -9 ${PIDS[$i]}; wait ${PIDS[$i]} 2>/dev/null || true
  echo "$(date +%T.%N | cut -c1-12) killed node $i"
  sleep $DOWN
  start $i
  S=$(date +%s.%N)
  until up $i $(((i + 1) % 3)); do sleep 0.05; done
  E=$(date +%s.%N)
  echo "$(date +%T.%N | cut -c1-12) node $i restarted at $(date -d @$S +%T), Up again after $(python3 -c "print(f'{$E-$S:.2f}')") s"
done
wait $BENCH || true
cat $DIR/bench.txt | grep -v "^server\[" 
