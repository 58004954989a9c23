#!/usr/bin/env bash
# SMTP acceptance: poststelle's ingress against a stock Postfix, same load, same machine, same run.
#
# Prerequisites (what `make run` installs): .venv, the Kafka jars in var/kafka/lib, Postfix
# (smtp-source, postfix, postconf, postfix-ldap) and swaks. Run as root: the private Postfix's
# master(8) needs it (without root only the poststelle half runs). Loopback only; ports
# 26088-26102 (poststelle), 26103 (Postfix); BENCH_PORT_BASE (bench/stack.sh) moves them.
#
#   bash bench/ingress.sh            # MESSAGES=10000 SESSIONS=20 SIZE=4096 by default
#
# Load: smtp-source, SESSIONS parallel sessions, MESSAGES messages of SIZE body bytes, one recipient,
# once with one connection per message and once with -d ("don't disconnect after sending a message;
# send the next message over the same connection"). 200 messages warm each server up first, and the
# poststelle stack is warmed up before its first measurement until the broker's JIT compilers are
# quiet (`warm_broker` in bench/stack.sh: rounds of 5,000 messages, usually 6-10).
# Figures:
# - msgs/s: MESSAGES / wall time of the smtp-source run (smtp-source exits non-zero at the first
#   reply that is not 2xx, so a completed run means every message got its 250).
# - CPU: busy CPU-seconds of the whole machine (/proc/stat, all cores, load generator included)
#   during the smtp-source run, per 1000 messages.
# - p50/p99: smtp-source prints no latencies, so bench/smtp_latency.py repeats the same load (same
#   sessions, messages, size, connection mode) and times each message from writing the final "."
#   to reading the reply. It is a Python client and takes CPU from the server under test, so its own
#   msgs/s is lower than smtp-source's; it is printed for that reason only. The last lines give
#   the ratios poststelle/Postfix per connection mode: msgs/s, p50 and p99.
# poststelle runs as `poststelle up` with Kafka and the ingress only (no stages or sinks competing
# for the 2 cores; bench/pipeline.sh measures the whole pipeline). Postfix runs from its own config
# and queue under var/bench/postfix with relay_domains = school.test and every transport discard:
# it fsyncs the queue file before its 250 and then discards the message. Like the ingress's
# `recipient` check, it looks every recipient up in the bench stack's slapd before its 250 at RCPT
# (relay_recipient_maps = ldap:..., the ingress's filter; bench/postfix.sh): the script checks that
# both refuse an unknown recipient with 550 and accept the test recipient before measuring. Both
# servers are up during all four measurements (the idle one costs the same in each).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/stack.sh
source bench/postfix.sh

MESSAGES=${MESSAGES:-10000} SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-4096}
FROM=bench@example.org TO=max.mustermann@school.test
PF=$ROOT/var/bench/postfix PF_PORT=$((BENCH_PORT_BASE + 15))
HZ=$(getconf CLK_TCK)
declare -A RATE P50 P99

busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }  # user nice system irq softirq steal

measure() {  # NAME PORT MODE(new|reuse)
    local name=$1 port=$2 mode=$3 flags=() t0 t1 c0 c1 rate cpu lat
    [ "$mode" = reuse ] && flags=(-d)
    smtp-source -s "$SESSIONS" -l "$SIZE" -m 200 -f "$FROM" -t "$TO" "127.0.0.1:$port"  # warm-up
    t0=$(date +%s.%N) c0=$(busy_ticks)
    smtp-source "${flags[@]}" -s "$SESSIONS" -l "$SIZE" -m "$MESSAGES" -f "$FROM" -t "$TO" "127.0.0.1:$port"
    t1=$(date +%s.%N) c1=$(busy_ticks)
    rate=$(calc "$MESSAGES / ($t1 - $t0)")
    cpu=$(calc "($c1 - $c0) / $HZ / $MESSAGES * 1000")
    lat=$("$PY" bench/smtp_latency.py --port "$port" --sessions "$SESSIONS" --messages "$MESSAGES" --size "$SIZE" \
          ${flags:+--reuse})
    RATE[$name.$mode]=$rate
    P50[$name.$mode]=$(sed -E 's/.*p50=([0-9.]+)ms.*/\1/' <<<"$lat")
    P99[$name.$mode]=$(sed -E 's/.*p99=([0-9.]+)ms.*/\1/' <<<"$lat")
    printf '%-10s %-22s smtp-source: %5.0f msgs/s, %.2f machine CPU-s per 1000 msgs | python client: %s\n' \
        "$name" "$([ "$mode" = reuse ] && echo '-d (connection reused)' || echo 'one connection/message')" \
        "$rate" "$cpu" "$lat"
}

postfix_up() {  # relay for school.test, recipients looked up in the stack's slapd, every transport discard
    pf_configure "$PF"
    pf_main "$PF" <<EOF
relay_domains = school.test
relay_recipient_maps = $(pf_ldap_recipients "$PF")
relay_transport = discard
default_transport = discard
EOF
    pf_master "$PF" <<<"127.0.0.1:$PF_PORT inet n - n - - smtpd"
    pf_start "$PF" "$PF_PORT"
}

postfix_down() { pf_stop "$PF"; }

trap 'stack_down; postfix_down' EXIT
echo "bench/ingress.sh $(date -u +%FT%TZ): $MESSAGES messages of $SIZE bytes, $SESSIONS sessions;" \
     "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

stack_up ingress-only
as_root=$([ "$(id -u)" = 0 ] && echo yes || echo no)
if [ $as_root = yes ]; then postfix_up; else echo "not root: no private Postfix, no ratio"; fi
# both look recipients up in the stack's slapd: an unknown one is refused at RCPT, a known one passes
expect_rcpt_reply "$STACK_SMTP_PORT" nobody.here@school.test 550
expect_rcpt_reply "$STACK_SMTP_PORT" "$TO" 250
if [ $as_root = yes ]; then
    expect_rcpt_reply "$PF_PORT" nobody.here@school.test "550 5.1.1"
    expect_rcpt_reply "$PF_PORT" "$TO" 250
fi
# the broker's JIT (bench/stack.sh): poststelle is measured warm, as Postfix (no JIT) is
warm_broker "$STACK_SMTP_PORT" "$TO"
# both servers run through every measurement, so each one's idle twin costs the same in both
measure poststelle "$STACK_SMTP_PORT" new
measure poststelle "$STACK_SMTP_PORT" reuse
[ $as_root = yes ] || exit 0
measure postfix "$PF_PORT" new
measure postfix "$PF_PORT" reuse
postfix_down
stack_down

for mode in new reuse; do
    printf 'ratio poststelle/postfix (%s): %.2fx msgs/s (smtp-source); p50 %.1f vs %.1f ms (%.2fx); p99 %.1f vs %.1f ms (%.2fx)\n' \
        "$([ $mode = reuse ] && echo '-d' || echo 'one connection per message')" \
        "$(calc "${RATE[poststelle.$mode]} / ${RATE[postfix.$mode]}")" \
        "${P50[poststelle.$mode]}" "${P50[postfix.$mode]}" "$(calc "${P50[poststelle.$mode]} / ${P50[postfix.$mode]}")" \
        "${P99[poststelle.$mode]}" "${P99[postfix.$mode]}" "$(calc "${P99[poststelle.$mode]} / ${P99[postfix.$mode]}")"
done
