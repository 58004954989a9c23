#!/usr/bin/env bash
# End to end: smtp-source → ingress → Kafka → route → LMTP sink → Dovecot, on a bench stack of its own.
#
# Prerequisites (what `make run` installs): .venv, the Kafka jars in var/kafka/lib, Postfix's
# smtp-source, Dovecot. Loopback only, ports 46088-46097, state in var/bench/stack (emptied first).
#
#   bash bench/pipeline.sh   # MESSAGES=5000 SESSIONS=20 SIZE=4096 PACED_RATE=40 PACED_MESSAGES=2000
#
# The whole stack runs on the 2 cores: Kafka, Dovecot, smtp-sink, slapd, NSD, ingress, stage:route,
# sink:lmtp, sink:smarthost, retry, bounce, sink:analytics (embedded chDB). All mail goes to one
# local mailbox.
# 1. Saturated: smtp-source -d (connections reused), SESSIONS parallel sessions, MESSAGES messages of
#    SIZE body bytes, as fast as the ingress accepts. When the pipeline delivers more slowly than the
#    ingress accepts, a backlog builds, and the latency of later messages is mostly that queueing.
# 2. Paced: bench/smtp_latency.py sends PACED_MESSAGES at PACED_RATE msgs/s (a load the pipeline keeps
#    up with), for the latency of the pipeline itself.
# Figures come from the analytics table poststelle.events (`poststelle sql --json`):
# - latency per message: `delivered`.time (made by the LMTP sink when Dovecot answered 250) minus its
#   `received_time` (the ingress's `received` event time, made just before the Kafka commit that
#   precedes the client's 250); millisecond timestamps;
# - sustained msgs/s: delivered messages / (last delivered time − first received time);
# - the ingress's acceptance rate: MESSAGES / wall time of the smtp-source run;
# - CPU seconds per component during phase 1 (/proc, until the last delivery was counted).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/stack.sh

MESSAGES=${MESSAGES:-5000} SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-4096}
PACED_RATE=${PACED_RATE:-40} PACED_MESSAGES=${PACED_MESSAGES:-2000}
TO=max.mustermann@school.test

sql() { stack_cli sql --json "$1" | "$PY" -c 'import json, sys; print(*json.load(sys.stdin)["rows"][0], sep="\t")'; }

wait_delivered() {  # COUNT: poll analytics (every 2 s, at most 10 min) until COUNT deliveries are recorded
    for _ in $(seq 300); do
        [ "$(sql "SELECT count() FROM poststelle.events FINAL WHERE type = 'delivered'" || echo 0)" -ge "$1" ] && return
        sleep 2
    done
    echo "timed out waiting for $1 deliveries" >&2
}

report() {  # SINCE_MS: figures for the deliveries of messages received since then
    local n first last p50 p99 pmax
    read -r n first last p50 p99 pmax < <(sql "
        SELECT count(), toUnixTimestamp64Milli(min(received)), toUnixTimestamp64Milli(max(time)),
               quantileExact(0.5)(ms), quantileExact(0.99)(ms), max(ms)
        FROM (SELECT time, parseDateTime64BestEffort(JSONExtractString(payload, 'received_time'), 3) AS received,
                     dateDiff('millisecond', received, time) AS ms
              FROM poststelle.events FINAL WHERE type = 'delivered')
        WHERE toUnixTimestamp64Milli(received) >= $1")
    printf '  %d delivered in %.1fs (first received → last delivered): %.0f msgs/s sustained\n' \
        "$n" "$(calc "($last - $first) / 1000")" "$(calc "$n * 1000 / ($last - $first)")"
    echo "  latency received → delivered: p50 ${p50} ms, p99 ${p99} ms, max ${pmax} ms"
}

trap stack_down EXIT
echo "bench/pipeline.sh $(date -u +%FT%TZ): $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
stack_up

echo "1. saturated: smtp-source -d, $SESSIONS sessions, $MESSAGES messages of $SIZE bytes"
start_ms=$(date +%s%3N) cpu0=$(stack_cpu)
smtp-source -d -s "$SESSIONS" -l "$SIZE" -m "$MESSAGES" -f bench@example.org -t "$TO" "127.0.0.1:$STACK_SMTP_PORT"
end_ms=$(date +%s%3N)
printf '  ingress accepted %d messages in %.1fs: %.0f msgs/s (smtp-source wall time)\n' \
    "$MESSAGES" "$(calc "($end_ms - $start_ms) / 1000")" "$(calc "$MESSAGES * 1000 / ($end_ms - $start_ms)")"
wait_delivered "$MESSAGES"
echo "  CPU seconds: $(cpu_delta "$cpu0" "$(stack_cpu)")"
report "$start_ms"

echo "2. paced: $PACED_MESSAGES messages at $PACED_RATE msgs/s ($SESSIONS sessions, connections reused)"
paced_ms=$(date +%s%3N)
echo "  client: $("$PY" bench/smtp_latency.py --port "$STACK_SMTP_PORT" --sessions "$SESSIONS" --reuse \
    --messages "$PACED_MESSAGES" --size "$SIZE" --rate "$PACED_RATE" --recipient "$TO")"
wait_delivered $((MESSAGES + PACED_MESSAGES))
report "$paced_ms"

echo "outcomes: $(sql "SELECT countIf(type = 'delivered'), countIf(type = 'deferred'), countIf(type = 'bounced'),
    countIf(type = 'deadlettered') FROM poststelle.events FINAL" |
    awk '{printf "delivered=%s deferred=%s bounced=%s deadlettered=%s", $1, $2, $3, $4}');" \
    "maildir: $(find "$STACK_HOME/mail/school.test/${TO%@*}/new" -type f | wc -l) files"
