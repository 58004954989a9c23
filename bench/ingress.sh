#!/usr/bin/env bash
# SMTP acceptance: poststelle's ingress against a stock Postfix, same load, same machine, same run.
#
# Prerequisites (what `make run` installs): .venv, the Kafka jars in var/kafka/lib, Postfix
# (smtp-source, postfix, postconf). Run as root: the private Postfix's master(8) needs it (without
# root only the poststelle half runs). Loopback only; ports 46088-46097 (poststelle), 46098 (Postfix).
#
#   bash bench/ingress.sh            # MESSAGES=10000 SESSIONS=20 SIZE=4096 by default
#
# Load: smtp-source, SESSIONS parallel sessions, MESSAGES messages of SIZE body bytes, one recipient,
# once with one connection per message and once with -d ("don't disconnect after sending a message;
# send the next message over the same connection"). 200 messages warm each server up first.
# Figures:
# - msgs/s: MESSAGES / wall time of the smtp-source run (smtp-source exits non-zero at the first
#   reply that is not 2xx, so a completed run means every message got its 250).
# - CPU: busy CPU-seconds of the whole machine (/proc/stat, all cores, load generator included)
#   during the smtp-source run, per 1000 messages.
# - p50/p99: smtp-source prints no latencies, so bench/smtp_latency.py repeats the same load (same
#   sessions, messages, size, connection mode) and times each message from writing the final "."
#   to reading the reply. It is a Python client and takes CPU from the server under test, so its own
#   msgs/s is lower than smtp-source's; it is printed for that reason only.
# poststelle runs as `poststelle up` with Kafka and the ingress only (no stages or sinks competing
# for the 2 cores; bench/pipeline.sh measures the whole pipeline). Postfix runs from its own config
# and queue under var/bench/postfix with relay_domains = school.test and every transport discard:
# it fsyncs the queue file before its 250 and then discards the message.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/stack.sh

MESSAGES=${MESSAGES:-10000} SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-4096}
FROM=bench@example.org TO=max.mustermann@school.test
PF=$ROOT/var/bench/postfix PF_PORT=46098
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

postfix_up() {
    rm -rf "$PF" && mkdir -p "$PF/etc" "$PF/spool" "$PF/data" && chown postfix "$PF/data"
    cat >"$PF/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PF/spool
data_directory = $PF/data
maillog_file_prefixes = $PF
maillog_file = $PF/maillog
myhostname = bench-postfix.invalid
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
relay_domains = school.test
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
relay_transport = discard
default_transport = discard
alias_maps =
alias_database =
EOF
    # Debian's stock services, without chroot; smtpd on its own loopback port
    cat >"$PF/etc/master.cf" <<EOF
127.0.0.1:$PF_PORT inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF
    postfix -c "$PF/etc" check >/dev/null 2>&1 || true  # creates the queue directories
    postfix -c "$PF/etc" start >/dev/null 2>&1 || true
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PF_PORT") 2>/dev/null && return 0; sleep 0.2; done
    echo "private Postfix did not start; see $PF/maillog" >&2 && tail -5 "$PF/maillog" >&2 && return 1
}

postfix_down() { [ -f "$PF/etc/main.cf" ] && postfix -c "$PF/etc" stop >/dev/null 2>&1 || true; }

trap 'stack_down; postfix_down' EXIT
echo "bench/ingress.sh $(date -u +%FT%TZ): $MESSAGES messages of $SIZE bytes, $SESSIONS sessions;" \
     "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

stack_up ingress-only
measure poststelle "$STACK_SMTP_PORT" new
measure poststelle "$STACK_SMTP_PORT" reuse
stack_down

if [ "$(id -u)" != 0 ]; then echo "not root: no private Postfix, no ratio"; exit 0; fi
postfix_up
measure postfix "$PF_PORT" new
measure postfix "$PF_PORT" reuse
postfix_down

for mode in new reuse; do
    printf 'ratio poststelle/postfix (%s): %.2fx msgs/s (smtp-source), p50 %.1f vs %.1f ms, p99 %.1f vs %.1f ms\n' \
        "$([ $mode = reuse ] && echo '-d' || echo 'one connection per message')" \
        "$(calc "${RATE[poststelle.$mode]} / ${RATE[postfix.$mode]}")" \
        "${P50[poststelle.$mode]}" "${P50[postfix.$mode]}" "${P99[poststelle.$mode]}" "${P99[postfix.$mode]}"
done
