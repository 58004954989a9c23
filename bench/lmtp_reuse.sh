#!/usr/bin/env bash
# LMTP delivery into Dovecot with and without connection reuse: per run, deliveries per second and CPU-ms
# per message of the client (bench/lmtp_reuse.py) and of Dovecot (its process tree, `tree_cpu`).
# Starts the bench stack's daemons only (bench/stack.sh, `stack_up daemons-only`: Dovecot, slapd,
# NSD, clamd and an idle Kafka), then delivers straight into Dovecot's LMTP port.
#
#   bash bench/lmtp_reuse.sh        # MESSAGES=2000 ROUNDS=3
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/stack.sh
trap 'stack_down' EXIT
stack_up daemons-only
DOVECOT=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["components"]["dovecot"]["pid"])' \
          "$STACK_HOME/run/status.json")
echo "bench/lmtp_reuse.sh $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD): 2 cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
MESSAGES=${MESSAGES:-2000}
for _ in $(seq "${ROUNDS:-3}"); do
    for reuse in 0 2; do
        before=$(tree_cpu "dovecot=$DOVECOT")
        client=$("$PY" bench/lmtp_reuse.py "$STACK_LMTP_PORT" "$reuse" --messages "$MESSAGES")
        sleep 0.5  # the LMTP processes end and are reaped: their time is then their master's
        echo "$client, Dovecot $(cpu_per_message "$before" "$(tree_cpu "dovecot=$DOVECOT")" "$MESSAGES" | cut -d';' -f1 |
            sed 's/^dovecot //') CPU-ms per message"
    done
done
