#!/bin/bash
# Certificates rotated under load (docs/security.md): three nodes with TLS looking at
# their files every second; `scandium bench` writes through tikv-client for MINUTES
# minutes while the nodes' certificate and key are made anew (`scandium cert create-node
# --overwrite`) every EVERY seconds. Reports bench's errors and longest request, and how
# many reloads the nodes took and refused (a look between the certificate's write and
# the key's is refused, harmlessly). Usage:
#   scripts/tls-rotate.sh [MINUTES] [EVERY]
# Needs target/release/scandium. Uses 127.0.0.1:24900-24902 and /tmp/tls-rotate.
set -euo pipefail
MINUTES=${1:-10}
EVERY=${2:-30}
BIN=${BIN:-target/release/scandium}
DIR=/tmp/tls-rotate
rm -rf $DIR; mkdir -p $DIR
C=$DIR/certs
$BIN cert create-ca --dir $C >/dev/null
$BIN cert create-node --dir $C 127.0.0.1 localhost >/dev/null
$BIN cert create-client --dir $C bench >/dev/null
printf '[security]\nreload-interval-ms = 1000\n' >$DIR/scandium.toml
ADDRS=(127.0.0.1:24900 127.0.0.1:24901 127.0.0.1:24902)
PIDS=()
for i in 0 1 2; do
  JOIN=$([ $i -gt 0 ] && echo "--join ${ADDRS[0]}" || true)
  $BIN server --config $DIR/scandium.toml --data-dir $DIR/d$i --addr ${ADDRS[$i]} $JOIN \
    --ca $C/ca.pem --cert $C/node.pem --key $C/node.key >$DIR/n$i.log 2>&1 &
  PIDS[$i]=$!
  sleep 2
done
trap 'kill ${PIDS[*]} 2>/dev/null || true' EXIT
sleep 5
SECONDS_TOTAL=$((MINUTES * 60))
$BIN bench --pd ${ADDRS[0]},${ADDRS[1]},${ADDRS[2]} --ca $C/ca.pem --cert $C/client.bench.pem \
  --key $C/client.bench.key --workload put --clients 16 --duration $SECONDS_TOTAL >$DIR/bench.txt 2>&1 &
BENCH=$!
ROTATIONS=0
S=$(date +%s)
while [ $(( $(date +%s) - S + EVERY )) -lt $SECONDS_TOTAL ]; do
  sleep $EVERY
  $BIN cert create-node --dir $C --overwrite 127.0.0.1 localhost >/dev/null
  ROTATIONS=$((ROTATIONS + 1))
done
wait $BENCH || true
echo "rotations: $ROTATIONS every $EVERY s"
grep -E '^(ops|latency|longest_gap)' $DIR/bench.txt
grep -E '^first error|^errors by second' $DIR/bench.txt || true
for i in 0 1 2; do
  M=$(curl -s --cacert $C/ca.pem --cert $C/client.bench.pem --key $C/client.bench.key \
    https://${ADDRS[$i]}/metrics | grep -E '^scandium_tls_reloads_total' | tr '\n' ' ')
  echo "node $i: $M; quorum lost $(grep -c 'quorum is not active' $DIR/n$i.log || true) times"
done
