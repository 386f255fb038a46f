#!/bin/bash
# The first simulator seed in FROM..TO that fails with a breakage flag (--unsafe-cas,
# --unsafe-sleeping-lease, ...) and passes without it: what crates/sim/tests/sim.rs's
# "is_caught" tests pin, and what moves whenever the simulated code changes.
# Usage:
#   scripts/breakage-seed.sh FLAG FROM TO [SIMULATOR ARGS...]
#   e.g. scripts/breakage-seed.sh --unsafe-cas 0 2000 --duration-ms 60000 --txn-clients 0 --bank-clients 0
# Needs target/release/scandium-sim (cargo build --release -p scandium-sim), or SIM=path.
set -uo pipefail
FLAG=$1; FROM=$2; TO=$3; shift 3
SIM=${SIM:-target/release/scandium-sim}
for ((s = FROM; s < TO; s++)); do
  if ! $SIM --seed $s "$@" $FLAG >/dev/null 2>&1; then
    if $SIM --seed $s "$@" >/dev/null 2>&1; then echo "FOUND $s"; exit 0; fi
    echo "seed $s fails with and without $FLAG"
  fi
done
echo "none in $FROM..$TO"
