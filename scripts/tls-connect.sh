#!/bin/bash
# How long a new TLS connection takes to be ready (docs/security.md): one node with TLS
# (certificates from `scandium cert`); N times, Python opens a TCP connection, completes
# the TLS handshake with a client certificate (ALPN h2), sends the HTTP/2 preface and
# waits for the server's SETTINGS frame: the moment a gRPC call can go. Prints the
# median, p99 and longest. Usage:
#   scripts/tls-connect.sh [N]
# Needs target/release/scandium and python3. Uses 127.0.0.1:24801 and /tmp/tls-connect.
set -euo pipefail
N=${1:-300}
BIN=${BIN:-target/release/scandium}
DIR=/tmp/tls-connect
rm -rf $DIR; mkdir -p $DIR
$BIN cert create-ca --dir $DIR/c >/dev/null
$BIN cert create-node --dir $DIR/c 127.0.0.1 >/dev/null
$BIN cert create-client --dir $DIR/c app >/dev/null
$BIN server --data-dir $DIR/d --addr 127.0.0.1:24801 --ca $DIR/c/ca.pem --cert $DIR/c/node.pem \
  --key $DIR/c/node.key >$DIR/server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
sleep 2
python3 - "$DIR/c" "$N" <<'PY'
import socket, ssl, statistics, sys, time
certs, n = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(cafile=f"{certs}/ca.pem")
ctx.load_cert_chain(f"{certs}/client.app.pem", f"{certs}/client.app.key")
ctx.set_alpn_protocols(["h2"])
times = []
for _ in range(n):
    began = time.perf_counter()
    tcp = socket.create_connection(("127.0.0.1", 24801))
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = ctx.wrap_socket(tcp, server_hostname="127.0.0.1")
    assert tls.selected_alpn_protocol() == "h2"
    tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    tls.recv(9)
    times.append((time.perf_counter() - began) * 1000)
    tls.close()
times.sort()
print(f"TLS connection ready: median {statistics.median(times):.2f} ms, "
      f"p99 {times[int(len(times) * 0.99)]:.2f} ms, longest {times[-1]:.2f} ms, over {n}")
PY
