#!/bin/bash
# TLS against plaintext through tikv-client (docs/security.md): one node started plaintext
# and one with TLS (certificates from `scandium cert`), each loaded with the same keys;
# `scandium bench` runs raw puts and then raw gets against each in turn, ROUNDS times,
# so the pairs share the machine's state. Prints every run and the TLS/plaintext ratio of
# each pair. Usage:
#   scripts/tls-bench.sh [ROUNDS] [SECONDS] [CLIENTS]
# With AUTHZ=1 the TLS node checks grants: the bench client's certificate is granted
# read-write on V1 raw keys and authorisation is turned on, so every request is judged.
# Needs target/release/scandium (cargo build --release -p scandium-cli). Uses
# 127.0.0.1:24700-24701 and /tmp/tls-bench.
set -euo pipefail
ROUNDS=${1:-3}
SECONDS_EACH=${2:-10}
CLIENTS=${3:-32}
BIN=${BIN:-target/release/scandium}
DIR=/tmp/tls-bench
rm -rf $DIR; mkdir -p $DIR
$BIN cert create-ca --dir $DIR/certs >/dev/null
$BIN cert create-node --dir $DIR/certs 127.0.0.1 localhost >/dev/null
$BIN cert create-client --dir $DIR/certs bench >/dev/null
C=$DIR/certs
TLS_SERVER="--ca $C/ca.pem --cert $C/node.pem --key $C/node.key"
TLS_CLIENT="--ca $C/ca.pem --cert $C/client.bench.pem --key $C/client.bench.key"
$BIN server --data-dir $DIR/plain --addr 127.0.0.1:24700 >$DIR/plain.log 2>&1 &
PLAIN=$!
$BIN server --data-dir $DIR/tls --addr 127.0.0.1:24701 $TLS_SERVER >$DIR/tls.log 2>&1 &
SECURE=$!
trap 'kill $PLAIN $SECURE 2>/dev/null || true' EXIT
sleep 3
if [ "${AUTHZ:-0}" = 1 ]; then
  $BIN cert create-client --dir $DIR/certs root >/dev/null
  ROOT="--pd 127.0.0.1:24701 --ca $C/ca.pem --cert $C/client.root.pem --key $C/client.root.key"
  $BIN ctl $ROOT grant bench --raw-v1 write >/dev/null
  $BIN ctl $ROOT authorization on >/dev/null
  echo "TLS node: authorization on, bench granted V1 raw read-write"
fi
ops() { grep -oE '^ops=[0-9]+' | cut -d= -f2; }
run() { # ADDR WORKLOAD [TLS flags]
  local addr=$1 workload=$2; shift 2
  $BIN bench --pd $addr "$@" --workload $workload --clients $CLIENTS --duration $SECONDS_EACH \
    --server-pid $([ $addr = 127.0.0.1:24700 ] && echo $PLAIN || echo $SECURE) 2>/dev/null
}
for round in $(seq 1 $ROUNDS); do
  for workload in put get; do
    P=$(run 127.0.0.1:24700 $workload | tee -a $DIR/runs.txt | grep -E '^(ops|latency)' | tr '\n' ' ')
    T=$(run 127.0.0.1:24701 $workload $TLS_CLIENT | tee -a $DIR/runs.txt | grep -E '^(ops|latency)' | tr '\n' ' ')
    PO=$(echo "$P" | ops); TO=$(echo "$T" | ops)
    echo "round $round $workload: plaintext $P"
    echo "round $round $workload: TLS       $T"
    echo "round $round $workload: TLS/plaintext = $(python3 -c "print(f'{$TO/$PO:.3f}')")"
  done
done
