#!/usr/bin/env bash
# What one real agent costs its machine: a release tether-server at its default intervals
# (metrics 10 s, heartbeat 5 s), one release tether-agent allowed the programs of --dev's local
# agent, and the agent's RSS and CPU time read from /proc: after a warm-up, each minute of an
# idle window, after 12 commands, and one idle minute after them. Ends everything it started.
#
# Usage, from the workspace root (the agent as shipped: the `agent` profile, see Cargo.toml):
#   cargo build --release -p tether-server -p tetherctl && cargo build --profile agent -p tether-agent
#   bench/agent-cost.sh [IDLE_SECS]      (default 300; BIN, AGENT and CTL override the binaries)
#
# The agent runs with events on: its spool in the state directory and its socket, through which
# the script reports a few events (tether-agent emit) before the idle window.
set -euo pipefail
IDLE=${1:-300}
BIN=${BIN:-target/release}
CTL=${CTL:-target/release/tetherctl}
AGENT=${AGENT:-target/agent/tether-agent}
DIR=$(mktemp -d /tmp/agent-cost.XXXX)
PORT=7790
APID=
SPID=
$BIN/tether-server --listen 127.0.0.1:$PORT --metrics-listen 127.0.0.1:$((PORT+1)) \
    --data-dir "$DIR/data" --print-enrollment-token >"$DIR/server.out" 2>"$DIR/server.log" &
SPID=$!
trap 'kill $APID $SPID 2>/dev/null || true; wait 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do grep -q -- '--enroll-token' "$DIR/server.out" 2>/dev/null && break; sleep 0.1; done
ENROLL=$(grep -o -- '--enroll-token [^ ]*' "$DIR/server.out" | awk '{print $2}')
export TETHER_TOKEN=$(grep -o 'TETHER_TOKEN=[^ ]*' "$DIR/server.out" | head -1 | cut -d= -f2)
export TETHER_SERVER=http://127.0.0.1:$PORT
$AGENT --server "$TETHER_SERVER" --state-dir "$DIR/agent" --enroll-token "$ENROLL" \
    --allow-exec /usr/bin/uptime --allow-exec /usr/bin/uname --allow-exec /usr/bin/df \
    --allow-exec /usr/bin/hostname --label bench=agent-cost 2>"$DIR/agent.log" &
APID=$!
TCK=$(getconf CLK_TCK)
cpu() { awk -v t="$TCK" '{ sub(/^.*\) /, ""); split($0, f, " "); printf "%.2f", (f[12] + f[13]) / t }' /proc/$APID/stat; }
field() { awk -v k="$1" '$1 == k { print $2 }' /proc/$APID/status; }
report() { echo "$1: RSS $(field VmRSS:) KiB, peak $(field VmHWM:) KiB, threads $(field Threads:), CPU $(cpu) s"; }
sleep 25
for i in 1 2 3 4 5; do
  $AGENT emit --state-dir "$DIR/agent" --kind bench.event --severity warning --attr n=$i "event $i" \
      || echo "emit $i failed"
done
sleep 5
report "after 30 s (warm-up, 5 events emitted)"
C0=$(cpu); T0=$(date +%s.%N)
for i in $(seq $((IDLE / 60))); do sleep 60; report "idle +${i} min"; done
C1=$(cpu); T1=$(date +%s.%N)
echo "idle window: $(echo "($C1 - $C0) / ($T1 - $T0) * 100" | bc -l | xargs printf '%.4f') % of one core over $(echo "$T1 - $T0" | bc | xargs printf '%.0f') s"
for p in /usr/bin/uptime /usr/bin/uname /usr/bin/df /usr/bin/hostname; do
  for _ in 1 2 3; do $CTL cmd run -l bench=agent-cost -- $p >/dev/null 2>&1; done
done
report "after 12 commands (uptime, uname, df, hostname x3)"
$CTL cmd list | head -5
C2=$(cpu); T2=$(date +%s.%N)
sleep 60
C3=$(cpu); T3=$(date +%s.%N)
report "idle 60 s after the commands"
echo "after-commands window: $(echo "($C3 - $C2) / ($T3 - $T2) * 100" | bc -l | xargs printf '%.4f') % of one core"
