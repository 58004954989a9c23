#!/usr/bin/env bash
# End to end: poststelle (smtp-source → ingress → Kafka → every content stage → LMTP sink → Dovecot)
# against Postfix → amavisd-new (ClamAV + SpamAssassin) → Dovecot LMTP, same load, same run.
#
# Prerequisites (what `make run` installs): .venv, the Kafka jars in var/kafka/lib, Postfix
# (smtp-source, postfix-ldap), Dovecot, clamd, amavisd-new, spamassassin, swaks. Loopback only,
# ports BENCH_PORT_BASE (26088) .. +18, state in var/bench/ (emptied first). Run as root: the
# private Postfix's master(8) and amavisd (which drops to the amavis user) need it; without root
# only the poststelle half runs.
#
#   bash bench/pipeline.sh   # MESSAGES=3000 SESSIONS=20 SIZE=4096 PACED_RATE=40 PACED_MESSAGES=2000 WARMUP=2000 WARM_ROUNDS=15
#                            # FROM=bench@bench.test
#   ONLY=poststelle|amavis bash bench/pipeline.sh   # one half (no ratio)
#
# Load (both): smtp-source -d -s SESSIONS -m MESSAGES -l SIZE, one recipient (a Dovecot mailbox),
# then bench/smtp_latency.py with the same shape for the accept latency, end of DATA to the reply.
# The sender is FROM, both envelope and From: field; its domain bench.test is in the stack's NSD with
# SPF (pass for 127.0.0.1) and DMARC p=none, as real senders' domains resolve. Until 2026-12-04 it
# was bench@example.org, a name NSD answers REFUSED (it is not a resolver): a temporary failure,
# never cached, so every message paid two uncached lookups in poststelle's auth stage and
# SpamAssassin's checks saw errors; FROM=bench@example.org measures that worst case again.
# poststelle: `poststelle up` with the local config's topology (deploy/local/poststelle.toml:
# blocklist, virus, attachment, auth, expand, spam, route; the ingress waits for the verdict before
# its 250), the LMTP sink into the stack's Dovecot, retry, bounce, analytics (embedded chDB),
# Kafka, slapd, NSD, clamd, all on the 2 cores. Figures come from the analytics table
# poststelle.events (`poststelle sql --json`):
# - latency per message: `delivered`.time (made by the LMTP sink when Dovecot answered 250) minus its
#   `received_time` (the ingress's `received` event time); millisecond timestamps;
# - sustained msgs/s: delivered messages / (last delivered time − first received time);
# - the ingress's acceptance rate: MESSAGES / wall time of the smtp-source run;
# - CPU milliseconds per message per component (process trees, /proc) from the start of the
#   smtp-source run until the last delivery was counted;
# - a paced run: PACED_MESSAGES at PACED_RATE msgs/s (a load the pipeline keeps up with), for the
#   latency of the pipeline itself.
# Postfix + amavis (bench/amavis.sh says how it is set up and tuned): the same stack's Dovecot,
# clamd, slapd and NSD (`stack_up daemons-only`: nothing of poststelle's own runs). Delivered =
# files in the test mailbox's maildir; sustained msgs/s: MESSAGES / (newest file's mtime − start of
# smtp-source); CPU per message of postfix (master and every child), amavis (parent and children),
# clamd, Dovecot, slapd, NSD until the last delivery.
# Before measuring, both must refuse an unknown recipient at RCPT; a test virus (EICAR) sent to
# amavis must be blocked (clamd ran) and a delivered mail must carry X-Spam-Status (SA ran).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/stack.sh
source bench/postfix.sh
source bench/amavis.sh

MESSAGES=${MESSAGES:-3000} SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-4096}
FROM=${FROM:-bench@bench.test}  # a sender domain in NSD with SPF and DMARC (deploy/local/dns/test.zone)
PACED_RATE=${PACED_RATE:-40} PACED_MESSAGES=${PACED_MESSAGES:-2000} WARMUP=${WARMUP:-2000}
TO=max.mustermann@school.test
MAILBOX=$STACK_HOME/mail/school.test/${TO%@*}
EICAR=$("$PY" -c 'import sys; print(bytes.fromhex(open(sys.argv[1]).read().split(":")[3].strip()).decode())' \
        deploy/local/clamav/poststelle.ndb)  # the test virus, from the stack's signature (no literal copy in the repo)
declare -A SUSTAINED

sql() { stack_cli sql --json "$1" | "$PY" -c 'import json, sys; print(*json.load(sys.stdin)["rows"][0], sep="\t")'; }

wait_delivered() {  # COUNT: poll analytics (every 2 s, at most 10 min) until COUNT deliveries are recorded
    for _ in $(seq 300); do
        [ "$(sql "SELECT count() FROM poststelle.events FINAL WHERE type = 'delivered'" || echo 0)" -ge "$1" ] && return
        sleep 2
    done
    echo "timed out waiting for $1 deliveries" >&2
}

report() {  # SINCE_MS [NAME]: figures for the deliveries of messages received since then
    local n first last p50 p99 pmax
    read -r n first last p50 p99 pmax < <(sql "
        SELECT count(), toUnixTimestamp64Milli(min(received)), toUnixTimestamp64Milli(max(time)),
               quantileExact(0.5)(ms), quantileExact(0.99)(ms), max(ms)
        FROM (SELECT time, parseDateTime64BestEffort(JSONExtractString(payload, 'received_time'), 3) AS received,
                     dateDiff('millisecond', received, time) AS ms
              FROM poststelle.events FINAL WHERE type = 'delivered')
        WHERE toUnixTimestamp64Milli(received) >= $1")
    printf '  %d delivered in %.1fs (first received → last delivered): %.1f msgs/s sustained\n' \
        "$n" "$(calc "($last - $first) / 1000")" "$(calc "$n * 1000 / ($last - $first)")"
    echo "  latency received → delivered: p50 ${p50} ms, p99 ${p99} ms, max ${pmax} ms"
    [ -n "${2:-}" ] && SUSTAINED[$2]=$(calc "$n * 1000 / ($last - $first)")
    return 0
}

daemons_cpu() { stack_cpu | tr ' ' '\n' | grep -v '^kafka=' | tr '\n' ' '; }  # the idle broker is not Postfix's

mailbox_count() { { find "$MAILBOX/new" "$MAILBOX/cur" -type f 2>/dev/null || true; } | wc -l; }

wait_mailbox() {  # COUNT: poll the maildir until it holds COUNT mails (gives up after 3 min without one more)
    local n last=-1 idle=0
    while n=$(mailbox_count) && [ "$n" -lt "$1" ]; do
        if [ "$n" = "$last" ]; then idle=$((idle + 1)); else idle=0 last=$n; fi
        [ $idle -ge 180 ] && { echo "  gave up: $n of $1 mails in the mailbox, none for 3 min" >&2; return 1; }
        sleep 1
    done
}

newest_mail_ms() { "$PY" -c 'import os, sys
print(max(int(e.stat().st_mtime * 1000) for d in sys.argv[1:] for e in os.scandir(d)))' "$MAILBOX/new" "$MAILBOX/cur"; }

accept() {  # PORT: smtp-source -d, the saturated load; prints its acceptance rate
    local t0 t1
    t0=$(date +%s%3N)
    smtp-source -d -s "$SESSIONS" -l "$SIZE" -m "$MESSAGES" -f "$FROM" -t "$TO" "127.0.0.1:$1"
    t1=$(date +%s%3N)
    printf '  accepted %d messages in %.1fs: %.1f msgs/s (smtp-source wall time)\n' \
        "$MESSAGES" "$(calc "($t1 - $t0) / 1000")" "$(calc "$MESSAGES * 1000 / ($t1 - $t0)")"
}

accept_latency() {  # PORT: the same load from bench/smtp_latency.py, for p50/p99 end of DATA → reply
    echo "  accept latency, same load (bench/smtp_latency.py --reuse):" \
        "$("$PY" bench/smtp_latency.py --port "$1" --sessions "$SESSIONS" --reuse --messages "$MESSAGES" \
            --size "$SIZE" --sender "$FROM" --recipient "$TO")"
}

trap 'stack_down; amavis_stack_down' EXIT
echo "bench/pipeline.sh $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD): $(nproc) cores," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg); $MESSAGES messages of $SIZE bytes, $SESSIONS sessions"

ONLY=${ONLY:-}
if [ "$ONLY" != amavis ]; then
echo "== poststelle"
stack_up
echo "  stages: $(stack_cli status | awk '/^(stage|chain):/ {printf "%s ", $1}')"
expect_rcpt_reply "$STACK_SMTP_PORT" nobody.here@school.test 550
# warm-up, delivered before anything is measured (as the amavis half's): a fresh Kafka broker keeps
# compiling for tens of thousands of messages (bench/stack.sh, `warm_broker`), which a broker that has
# been up for a day has long done; rounds of WARMUP messages until a round's JIT is quiet (at most
# WARM_ROUNDS). They go to another mailbox (WARM_TO): Dovecot's cost per delivery grows with the
# mailbox (6.5 instead of 2.2-2.8 CPU-ms per message after 30,000), and the measured mailbox starts
# as empty as the amavis half's.
WARM_TO=${WARM_TO:-lena.mueller@school.test}
warmed=0
for round in $(seq 1 "${WARM_ROUNDS:-15}"); do
    jit0=$(broker_jit_seconds)
    smtp-source -d -s "$SESSIONS" -l "$SIZE" -m "$WARMUP" -f "$FROM" -t "$WARM_TO" "127.0.0.1:$STACK_SMTP_PORT"
    warmed=$((warmed + WARMUP))
    wait_delivered "$warmed"
    jit1=$(broker_jit_seconds)
    jit=$(calc "($jit1 - $jit0) * 1000 / $WARMUP")
    echo "  warm-up round $round: $WARMUP messages delivered; the broker's JIT compilers took $jit CPU-ms per message"
    awk "BEGIN { exit !($jit1 >= $jit0 && $jit < ${JIT_QUIET_MS:-0.03}) }" && break
done
echo "1. saturated: smtp-source -d, $SESSIONS sessions, $MESSAGES messages of $SIZE bytes"
start_ms=$(date +%s%3N) cpu0=$(stack_cpu) jit0=$(broker_jit_seconds)
accept "$STACK_SMTP_PORT"
wait_delivered $((warmed + MESSAGES))
echo "  CPU-ms per message: $(cpu_per_message "$cpu0" "$(stack_cpu)" "$MESSAGES")" \
     "(of the broker's, its JIT compilers: $(calc "($(broker_jit_seconds) - $jit0) * 1000 / $MESSAGES"))"
report "$start_ms" poststelle
accept_latency "$STACK_SMTP_PORT"
wait_delivered $((warmed + 2 * MESSAGES))

echo "2. paced: $PACED_MESSAGES messages at $PACED_RATE msgs/s ($SESSIONS sessions, connections reused)"
paced_ms=$(date +%s%3N)
echo "  client: $("$PY" bench/smtp_latency.py --port "$STACK_SMTP_PORT" --sessions "$SESSIONS" --reuse \
    --messages "$PACED_MESSAGES" --size "$SIZE" --rate "$PACED_RATE" --sender "$FROM" --recipient "$TO")"
wait_delivered $((warmed + 2 * MESSAGES + PACED_MESSAGES))
report "$paced_ms"

echo "  stage results: $(sql "SELECT arrayStringConcat(groupArray(concat(stage, '=', toString(c))), ' ')
    FROM (SELECT stage, count() AS c FROM poststelle.events FINAL WHERE type = 'stage_result'
          GROUP BY stage ORDER BY stage)")"
echo "  event JSON per message (analytics payloads, about what Kafka carries): $(sql "
    SELECT arrayStringConcat(groupArray(concat(type, '=', toString(b))), ' ') FROM (
        SELECT type, round(sum(length(payload)) / (SELECT countIf(type = 'received') FROM poststelle.events FINAL)) AS b
        FROM poststelle.events FINAL GROUP BY type ORDER BY b DESC LIMIT 6)") bytes"
echo "  outcomes: $(sql "SELECT countIf(type = 'delivered'), countIf(type = 'deferred'), countIf(type = 'bounced'),
    countIf(type = 'deadlettered') FROM poststelle.events FINAL" |
    awk '{printf "delivered=%s deferred=%s bounced=%s deadlettered=%s", $1, $2, $3, $4}');" \
    "maildir: $(mailbox_count) files"
stack_down
fi
[ "$ONLY" = poststelle ] && exit 0

if [ "$(id -u)" != 0 ]; then echo "not root: no Postfix + amavis, no ratio"; exit 0; fi
echo "== Postfix → amavisd-new (ClamAV + SpamAssassin) → Dovecot LMTP"
stack_up daemons-only
amavis_stack_up
expect_rcpt_reply "$AMAVIS_SMTP_PORT" nobody.here@school.test "550 5.1.1"
swaks --server 127.0.0.1 --port "$AMAVIS_SMTP_PORT" --from "$FROM" --to "$TO" \
      --header "Subject: eicar" --body "$EICAR" >/dev/null
smtp-source -d -s "$SESSIONS" -l "$SIZE" -m 40 -f "$FROM" -t "$TO" "127.0.0.1:$AMAVIS_SMTP_PORT"  # warm-up
wait_mailbox 40
grep -q "Blocked INFECTED (Poststelle.Test.Eicar" "$AMAVIS_HOME/amavis.log" ||
    { echo "amavis did not block the test virus: is clamd asked? see $AMAVIS_HOME/amavis.log" >&2; exit 1; }
spam_status=$(grep -h -m1 '^X-Spam-Status:' "$MAILBOX"/new/* | head -1)
[ -n "$spam_status" ] || { echo "no X-Spam-Status in the delivered mail: SpamAssassin did not run" >&2; exit 1; }
echo "  checks: the test virus was blocked (clamd); delivered mail has $spam_status"

echo "1. saturated: smtp-source -d, $SESSIONS sessions, $MESSAGES messages of $SIZE bytes"
before=$(mailbox_count) start_ms=$(date +%s%3N)
cpu0="$(amavis_stack_cpu) $(daemons_cpu)"
accept "$AMAVIS_SMTP_PORT"
wait_mailbox $((before + MESSAGES)) || true
cpu1="$(amavis_stack_cpu) $(daemons_cpu)"
delivered=$(($(mailbox_count) - before)) last_ms=$(newest_mail_ms)
SUSTAINED[amavis]=$(calc "$delivered * 1000 / ($last_ms - $start_ms)")
printf '  %d delivered in %.1fs (start of smtp-source → newest mail): %.1f msgs/s sustained\n' \
    "$delivered" "$(calc "($last_ms - $start_ms) / 1000")" "${SUSTAINED[amavis]}"
echo "  CPU-ms per message: $(cpu_per_message "$cpu0" "$cpu1" "$delivered")"
accept_latency "$AMAVIS_SMTP_PORT"
echo "  amavis: $(grep -c 'Passed CLEAN {' "$AMAVIS_HOME/amavis.log") passed clean," \
     "$(grep -c 'Passed SPAM' "$AMAVIS_HOME/amavis.log") passed spam," \
     "$(grep -cE 'Blocked [A-Z]+ (\([^)]*\) )?\{' "$AMAVIS_HOME/amavis.log") blocked; SpamAssassin's last score: $(grep -o 'Hits: [^,]*' "$AMAVIS_HOME/amavis.log" | tail -1)"
amavis_stack_down
stack_down

[ -n "$ONLY" ] && exit 0
printf 'ratio poststelle e2e / Postfix+amavis: %.2fx sustained delivered msgs/s (%.1f vs %.1f)\n' \
    "$(calc "${SUSTAINED[poststelle]} / ${SUSTAINED[amavis]}")" "${SUSTAINED[poststelle]}" "${SUSTAINED[amavis]}"
