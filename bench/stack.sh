# Sourced by bench/ingress.sh and bench/pipeline.sh: a poststelle stack of its own for benchmarks.
#
# Ports BENCH_PORT_BASE (26088) .. +14 on 127.0.0.1 (the comparisons' private daemons use +15 .. +19;
# set BENCH_PORT_BASE to run a second bench beside one that is running; keep it below 32768: a port
# in Linux's ephemeral range can be taken by a client connection's source port before the
# comparison's Postfix binds it, after the thousands of connections of a run, and then its master(8)
# fails to start, as happened with the old base 46088), state in var/bench/stack
# (Kafka data, blobs, maildirs, chDB, logs in var/bench/stack/log/). Needs .venv and the Kafka jars
# in var/kafka/lib (`make run`'s install steps: make deps venv kafka-jars).
#
#   stack_up [ingress-only|daemons-only]   empty var/bench/stack, start `poststelle up` in the
#                             background, wait until it is ready; daemons-only: slapd, NSD, clamd,
#                             Dovecot (and an idle Kafka), nothing of poststelle's own (for the
#                             Postfix+amavis run)
#   stack_down                SIGINT to the supervisor (it drains and stops everything), wait
#   stack_cli ARGS...         `poststelle ARGS` against this stack

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=$ROOT/.venv/bin/python
STACK_HOME=$ROOT/var/bench/stack
BENCH_PORT_BASE=${BENCH_PORT_BASE:-26088}  # below the ephemeral ports (32768-60999), see below
STACK_SMTP_PORT=$((BENCH_PORT_BASE + 6)) STACK_LDAP_PORT=$((BENCH_PORT_BASE + 2))
STACK_LMTP_PORT=$((BENCH_PORT_BASE + 7)) STACK_CLAMD_PORT=$((BENCH_PORT_BASE + 10))
STACK_PID=

stack_env() {
    local b=$BENCH_PORT_BASE
    export POSTSTELLE_CONFIG=$ROOT/deploy/local/poststelle.toml
    export POSTSTELLE_HOME=$STACK_HOME
    export POSTSTELLE_SUBMISSION__PORT=$b POSTSTELLE_SUBMISSION__TLS_PORT=$((b + 1))
    export POSTSTELLE_LDAP__PORT=$STACK_LDAP_PORT POSTSTELLE_DNS__PORT=$((b + 3))  # slapd, NSD
    export POSTSTELLE_KAFKA__BOOTSTRAP=127.0.0.1:$((b + 4))
    export POSTSTELLE_LOCAL__KAFKA_CONTROLLER_PORT=$((b + 5))
    export POSTSTELLE_INGRESS__PORT=$STACK_SMTP_PORT
    export POSTSTELLE_SINKS__LMTP__PORT=$STACK_LMTP_PORT
    export POSTSTELLE_SINKS__ANALYTICS__QUERY_PORT=$((b + 8))
    export POSTSTELLE_SINKS__SMARTHOST__PORT=$((b + 9))
    export POSTSTELLE_LOCAL__CLAMD_PORT=$STACK_CLAMD_PORT POSTSTELLE_STAGES__VIRUS__ADDRESS=127.0.0.1:$STACK_CLAMD_PORT  # clamd
    export POSTSTELLE_WEB__PORT=$((b + 11))  # the quarantine portal
    export POSTSTELLE_DESTINATIONS__STORE2__PORT=$((b + 12))  # the second LMTP store (the same Dovecot)
    export POSTSTELLE_DESTINATIONS__PHYSIK__PORT=$((b + 13))  # the physics department's smtp-sink
    export POSTSTELLE_DESTINATIONS__MX__PORT=$((b + 14))  # the test MX hosts (local.mx_hosts)
    export POSTSTELLE_LOCAL__KAFKA_JARS=$ROOT/var/kafka/lib
    export POSTSTELLE_INGRESS__MAX_CONNECTIONS_PER_IP=200  # the load generator is one client address
}

stack_cli() {
    (stack_env && "$ROOT/.venv/bin/poststelle" "$@")
}

stack_up() {
    [ -x "$PY" ] || { echo "no .venv: run make venv first" >&2; exit 1; }
    [ -d "$ROOT/var/kafka/lib" ] || { echo "no Kafka jars in var/kafka/lib: run make kafka-jars first" >&2; exit 1; }
    rm -rf "$STACK_HOME" && mkdir -p "$STACK_HOME"  # every run starts from an empty broker and store
    (
        stack_env
        if [ "${1:-}" = ingress-only ]; then  # Kafka + ingress: nothing downstream competes for the CPU
            # slapd and NSD stay: the ingress looks recipients up in LDAP (cached) before its 250
            export POSTSTELLE_SUPERVISOR__RUN_STAGES=false POSTSTELLE_SUPERVISOR__SINKS='[]'
            export POSTSTELLE_LOCAL__DOVECOT=false POSTSTELLE_LOCAL__SMARTHOST=false POSTSTELLE_LOCAL__CLAMD=false
            export POSTSTELLE_INGRESS__VERDICT_WAIT=0  # no stages run: there is no verdict to wait for
        elif [ "${1:-}" = daemons-only ]; then  # the mailbox server, scanner and directory for another MTA
            # Kafka stays (idle): the supervisor creates the topics before anything else
            export POSTSTELLE_SUPERVISOR__RUN_INGRESS=false POSTSTELLE_SUPERVISOR__RUN_STAGES=false
            export POSTSTELLE_SUPERVISOR__SINKS='[]' POSTSTELLE_LOCAL__SMARTHOST=false
            export POSTSTELLE_LOCAL__SMTP_SINK_DESTINATIONS='[]' POSTSTELLE_LOCAL__MX_HOSTS='[]'
        fi
        exec "$ROOT/.venv/bin/poststelle" up
    ) >"$STACK_HOME/up.log" 2>&1 &
    STACK_PID=$!
    if ! stack_cli status --wait 180 >/dev/null; then
        stack_cli status
        echo "the bench stack did not come up; see $STACK_HOME/up.log and $STACK_HOME/log/*.log" >&2
        exit 1
    fi
}

stack_down() {
    if [ -n "$STACK_PID" ] && kill -0 "$STACK_PID" 2>/dev/null; then
        kill -INT "$STACK_PID"
        wait "$STACK_PID" 2>/dev/null || true
    fi
    STACK_PID=
}

tree_cpu() {  # NAME=PID...: CPU seconds of each process tree, "name=secs ..."
    # every live process under PID counts its own time and that of its reaped children (/proc stat
    # utime stime cutime cstime): a Dovecot lmtp or Postfix smtpd child counts while it lives and,
    # through its parent, once it has exited
    "$PY" - "$@" <<'PYEOF'
import os, sys
hz = os.sysconf("SC_CLK_TCK")
parent, ticks = {}, {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    except OSError:
        continue
    parent[int(pid)] = int(fields[1])
    ticks[int(pid)] = sum(int(x) for x in fields[11:15])
def under(pid, root):
    while pid > 1:
        if pid == root:
            return True
        pid = parent.get(pid, 0)
    return False
out = []
for arg in sys.argv[1:]:
    name, _, root = arg.partition("=")
    if root.isdigit() and int(root) in ticks:
        out.append(f"{name}={sum(t for p, t in ticks.items() if under(p, int(root))) / hz:.2f}")
print(" ".join(out))
PYEOF
}

stack_cpu() {  # CPU seconds of every component the supervisor runs, with its children: "name=secs ..."
    local args
    args=$("$PY" -c 'import json, sys
print(" ".join(f"{n}={c.get('"'pid'"')}" for n, c in json.load(open(sys.argv[1]))["components"].items()))' \
        "$STACK_HOME/run/status.json")
    # shellcheck disable=SC2086
    tree_cpu $args
}

cpu_delta() {  # BEFORE AFTER (two stack_cpu lines): "name +secs ..." for what changed, largest first
    "$PY" -c '
import sys
a, b = (dict(kv.split("=") for kv in line.split()) for line in sys.argv[1:3])
d = sorted(((float(v) - float(a.get(k, 0)), k) for k, v in b.items()), reverse=True)
print(", ".join(f"{k} {s:.1f}s" for s, k in d if s >= 0.05))' "$1" "$2"
}

cpu_per_message() {  # BEFORE AFTER COUNT: "name N ms ..." CPU milliseconds per message, largest first, and the sum
    "$PY" -c '
import sys
a, b = (dict(kv.split("=") for kv in line.split()) for line in sys.argv[1:3])
n = int(sys.argv[3])
d = sorted(((1000 * (float(v) - float(a.get(k, 0))) / n, k) for k, v in b.items()), reverse=True)
print(", ".join(f"{k} {ms:.1f}" for ms, k in d if ms >= 0.05) + f"; total {sum(ms for ms, _ in d):.1f} CPU-ms per message")' "$1" "$2" "$3"
}

broker_jit_seconds() {  # CPU seconds the stack's broker has spent in its JIT compiler threads so far
    "$PY" - "$STACK_HOME/run/status.json" <<'PYEOF'
import json, os, sys
pid = json.load(open(sys.argv[1]))["components"]["kafka"]["pid"]
ticks = 0
for tid in os.listdir(f"/proc/{pid}/task"):
    try:  # HotSpot names them "C1 CompilerThread0", "C2 CompilerThread1", ... (comm: 15 characters)
        if "CompilerThre" not in open(f"/proc/{pid}/task/{tid}/comm").read():
            continue
        fields = open(f"/proc/{pid}/task/{tid}/stat").read().rpartition(")")[2].split()
    except OSError:
        continue
    ticks += int(fields[11]) + int(fields[12])
print(ticks / os.sysconf("SC_CLK_TCK"))
PYEOF
}

# The broker's JIT: a fresh Kafka keeps compiling for tens of thousands of messages (measured on
# 2026-12-05, rounds of 8,000 messages after 2,000: its compiler threads took 0.33, 0.17, 0.10, 0.08,
# 0.05, 0.05, 0.05, 0.02 CPU-ms per message, and the whole broker 0.63 falling to 0.15). A broker in
# service finished that long ago, and Postfix has no JIT; so the benches that compare with it warm
# the stack up until the compilers are quiet.
warm_broker() {  # SMTP_PORT RECIPIENT: rounds of smtp-source (-d) until a round's JIT is < JIT_QUIET_MS per message
    local port=$1 to=$2 per=${WARM_MESSAGES:-5000} rounds=${WARM_ROUNDS:-20} quiet=${JIT_QUIET_MS:-0.03}
    local round c0 c1 ms
    for round in $(seq 1 "$rounds"); do
        c0=$(broker_jit_seconds)
        smtp-source -d -s 20 -l 4096 -m "$per" -f bench@example.org -t "$to" "127.0.0.1:$port"
        c1=$(broker_jit_seconds)
        ms=$(calc "($c1 - $c0) * 1000 / $per")
        echo "  warm-up round $round ($per messages): the broker's JIT compilers took $ms CPU-ms per message"
        # (a compiler thread that ended during the round takes its ticks along: never "quiet" then)
        if awk "BEGIN { exit !($c1 >= $c0 && $ms < $quiet) }"; then
            return 0
        fi
    done
    echo "  warning: the broker's JIT still busy after $rounds warm-up rounds"
}

calc() { awk "BEGIN { printf \"%.6f\", $* }"; }  # floating-point arithmetic without bc
