#!/usr/bin/env bash
# Fills `scheduler dev` with N warm slots, then times Ctrl-C until it has removed
# every container and network (docs/BENCHMARKS.md, "stopping"). Usage:
#   cargo build --release --bins && tests/stop-time.sh 60
set -u
N=${1:?usage: tests/stop-time.sh SLOTS}
BIN=${CARGO_TARGET_DIR:-target}/release/scheduler
"$BIN" dev --pool "$N" > "/tmp/stop-$N.log" 2>&1 &
PID=$!
for _ in $(seq 1 600); do
  n=$(docker ps -q --filter label=berth.managed --filter label=berth.role=workspace | wc -l)
  [ "$n" -ge "$N" ] && break
  kill -0 "$PID" 2>/dev/null || { echo "scheduler dev exited:"; tail -5 "/tmp/stop-$N.log"; exit 1; }
  sleep 1
done
sleep 5
echo "containers before: $(docker ps -aq --filter label=berth.managed | wc -l)"
start=$(date +%s%N)
kill -INT "$PID"
wait "$PID"
end=$(date +%s%N)
echo "stopped in $(( (end - start) / 1000000 )) ms; left: $(docker ps -aq --filter label=berth.managed | wc -l) containers, $(docker network ls -q --filter label=berth.managed | wc -l) networks"
tail -2 "/tmp/stop-$N.log"
