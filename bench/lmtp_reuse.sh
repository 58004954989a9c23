#!/usr/bin/env bash
# LMTP delivery into Dovecot with and without connection reuse (bench/lmtp_reuse.py says what it prints).
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
"$PY" bench/lmtp_reuse.py "$STACK_LMTP_PORT" "$DOVECOT" --messages "${MESSAGES:-2000}" --rounds "${ROUNDS:-3}"
