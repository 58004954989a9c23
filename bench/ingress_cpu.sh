#!/usr/bin/env bash
# Where one ingress process spends its CPU per message: a quick A/B tool for ingress changes.
#
# Starts the ingress-only bench stack (bench/stack.sh: Kafka, slapd, NSD, one ingress process), warms
# it up until the broker's JIT is quiet (`warm_broker`), then runs smtp-source with MESSAGES (6000) messages of 4 KiB from 20
# sessions, once with one connection per message and once with connections reused (-d), and prints
# per mode: msgs/s, the machine's busy CPU per message, each component's CPU per message (ingress,
# kafka), and the ingress's threads: the event loop ("main") and the worker threads that write
# blobs, user and kernel time apart. Single runs differ by about 10 % on this machine: alternate the
# old and the new code a few times before believing a difference. No Postfix: bench/ingress.sh
# makes the comparison.
#
#   bash bench/ingress_cpu.sh        # POSTSTELLE_* variables reach the ingress, e.g.
#   POSTSTELLE_INGRESS__CHECK_TIMEOUT=2 bash bench/ingress_cpu.sh
#   MODES="reuse new new" bash bench/ingress_cpu.sh   # other modes, other order (new: one connection per message)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/stack.sh
MESSAGES=${MESSAGES:-6000}
TO=max.mustermann@school.test
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
threads() {  # PID: {"main"|thread name: [user ticks, system ticks]} of the live threads
    "$PY" - "$1" <<'PYEOF'
import json, os, sys
pid, out = sys.argv[1], {}
for tid in os.listdir(f"/proc/{pid}/task"):
    try:
        fields = open(f"/proc/{pid}/task/{tid}/stat").read().rpartition(")")[2].split()
        name = "main" if tid == pid else open(f"/proc/{pid}/task/{tid}/comm").read().strip()
    except OSError:
        continue
    ticks = out.setdefault(name, [0, 0])
    ticks[0] += int(fields[11])
    ticks[1] += int(fields[12])
print(json.dumps(out))
PYEOF
}

trap 'stack_down' EXIT
stack_up ingress-only
warm_broker "$STACK_SMTP_PORT" "$TO"  # the broker's JIT (bench/stack.sh)
INGRESS=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["components"]["ingress"]["pid"])' \
          "$STACK_HOME/run/status.json")
echo "bench/ingress_cpu.sh $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD): $MESSAGES messages per mode"
for mode in ${MODES:-new reuse}; do
    flags=()
    [ $mode = reuse ] && flags=(-d)
    cpu0=$(stack_cpu) th0=$(threads "$INGRESS") b0=$(busy_ticks) t0=$(date +%s.%N)
    smtp-source "${flags[@]}" -s 20 -l 4096 -m "$MESSAGES" -f bench@example.org -t "$TO" "127.0.0.1:$STACK_SMTP_PORT"
    t1=$(date +%s.%N) b1=$(busy_ticks) th1=$(threads "$INGRESS") cpu1=$(stack_cpu)
    printf '%s: %.0f msgs/s, machine %.2f CPU-ms per message; %s\n' \
        "$([ $mode = reuse ] && echo 'connections reused' || echo 'one connection per message')" \
        "$(calc "$MESSAGES / ($t1 - $t0)")" "$(calc "($b1 - $b0) / $(getconf CLK_TCK) / $MESSAGES * 1000")" \
        "$(cpu_per_message "$cpu0" "$cpu1" "$MESSAGES")"
    "$PY" - "$th0" "$th1" "$MESSAGES" "$(getconf CLK_TCK)" <<'PYEOF'
import json, sys
before, after, n, hz = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for name, (user, system) in after.items():
    u, s = user - before.get(name, [0, 0])[0], system - before.get(name, [0, 0])[1]
    if u + s:
        print(f"  ingress thread {name}: user {u * 1000 / hz / n:.3f}, kernel {s * 1000 / hz / n:.3f} CPU-ms per message")
PYEOF
done
