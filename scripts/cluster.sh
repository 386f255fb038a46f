# Shared by the scripts that run a local cluster (sourced, not run): starting a node,
# reading the stores' counts and the Region total, split keys, a process's CPU time.
# The caller sets BIN, DIR and ADDRS (node i listens on ${ADDRS[i]}, node 0 first; the
# others join it) and PIDS=().

# Starts node $1 and waits (at most 10 s) until it answers /health.
start() {
  local i=$1 join=""
  [ "$i" -gt 0 ] && join="--join ${ADDRS[0]}"
  $BIN server --data-dir $DIR/d$i --addr ${ADDRS[$i]} $join >>$DIR/n$i.log 2>&1 &
  PIDS[$i]=$!
  for t in $(seq 1 100); do curl -s ${ADDRS[$i]}/health >/dev/null && break; sleep 0.1; done
}

# Regions and leaders of every Up store, as `id:regions/leaders`.
counts() {
  curl -s ${ADDRS[0]}/pd/api/v1/stores | python3 -c "import json,sys
s=[x for x in json.load(sys.stdin)['stores'] if x['store']['state_name']=='Up']
print(' '.join(f\"{x['store']['id']}:{x['status']['region_count']}/{x['status']['leader_count']}\" for x in s))"
}

# How many Regions placement records.
region_total() {
  curl -s "${ADDRS[0]}/pd/api/v1/regions?limit=1" | python3 -c "import json,sys; print(json.load(sys.stdin)['total'])"
}

# $1 split keys inside the V1 space, before keyspace DEFAULT's edges: k00000001, ...
split_keys() {
  python3 -c "print(' '.join(f'k{i:08d}' for i in range(1, $1 + 1)))"
}

# CPU time process $1 has used, in clock ticks (utime + stime).
cpu() { awk '{print $14 + $15}' /proc/$1/stat; }
