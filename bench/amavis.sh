# Sourced by bench/pipeline.sh (after bench/stack.sh and bench/postfix.sh): the stack sites run
# instead of poststelle, Postfix → amavisd-new (ClamAV + SpamAssassin) → Dovecot LMTP, tuned as
# amavis's README.postfix and its mailing list advise, on loopback ports BENCH_PORT_BASE+16..+18.
# It delivers into the bench stack's Dovecot (the same mailbox server as poststelle's LMTP sink),
# scans with the stack's clamd (CONTSCAN over TCP) and looks recipients up in the stack's slapd.
#
#   amavis_stack_up        write the configs under var/bench/postfix-amavis and var/bench/amavis,
#                          start amavisd (foreground, in the background) and the Postfix instance
#   amavis_stack_down      stop both
#   amavis_stack_cpu       CPU seconds of each component's process tree: "postfix=S amavis=S"
#
# Postfix: the MX listener (AMAVIS_SMTP_PORT) with relay_recipient_maps over LDAP (as the ingress's
# recipient check) and content_filter = smtp-amavis:[127.0.0.1]:AMAVIS_PORT; the smtp-amavis
# transport: 4 processes, destination concurrency 4, no PIPELINING towards amavis (a 40 ms
# Nagle/delayed-ACK stall per message otherwise), XFORWARD, no DNS, data_done_timeout 1200,
# max_use 20; the re-injection listener (AMAVIS_BACK_PORT) without filter or lookups, relaying
# school.test to Dovecot over LMTP.
# amavisd-new: its own config file only (`amavisd -c FILE foreground`, Debian's conf.d is not read),
# $max_servers = 4, ClamAV through clamd (CONTSCAN of amavis's decoded parts, Debian's stock
# entry), the banned-file check with Debian's default rules, SpamAssassin with the rules Debian
# ships (/usr/share/spamassassin, the plugins of /etc/spamassassin/*.pre; Bayes as shipped:
# untrained, so unused) and its DNS tests against the stack's NSD (dns_server; the machine has no
# Internet), X-Spam-* headers on every message (tag level -999) so a delivered mail shows SA ran,
# no SQL, no BerkeleyDB (nanny/snmp), no quarantine (virus and banned mail is discarded).

AMAVIS_SMTP_PORT=$((BENCH_PORT_BASE + 16)) AMAVIS_PORT=$((BENCH_PORT_BASE + 17))
AMAVIS_BACK_PORT=$((BENCH_PORT_BASE + 18))
PFA=$ROOT/var/bench/postfix-amavis AMAVIS_HOME=$ROOT/var/bench/amavis
AMAVIS_PID=

amavis_config() {
    rm -rf "$AMAVIS_HOME" && mkdir -p "$AMAVIS_HOME"/{etc,tmp,var/.spamassassin,sa-site}
    # SpamAssassin's site config: the system's plugin loads and local.cf, and our DNS server
    local f
    for f in /etc/spamassassin/*.pre /etc/spamassassin/*.cf; do ln -s "$f" "$AMAVIS_HOME/sa-site/"; done
    echo "dns_server 127.0.0.1:$((BENCH_PORT_BASE + 3))" >"$AMAVIS_HOME/sa-site/zz-bench.cf"
    cat >"$AMAVIS_HOME/etc/amavisd.conf" <<EOF
use strict;
\$MYHOME = '$AMAVIS_HOME';
\$TEMPBASE = "\$MYHOME/tmp";
\$helpers_home = "\$MYHOME/var";   # SpamAssassin's home (.spamassassin: Bayes, auto-whitelist)
\$pid_file = "\$MYHOME/amavisd.pid";
\$lock_file = "\$MYHOME/amavisd.lock";
\$daemon_user = 'amavis';
\$daemon_group = 'amavis';
\$max_servers = 4;
\$child_timeout = 20*60;
\$enable_db = 0;
\$DO_SYSLOG = 0;
\$LOGFILE = "\$MYHOME/amavis.log";
\$log_level = 0;
\$myhostname = 'bench-amavis.invalid';
\$mydomain = 'school.test';
@local_domains_maps = (['.school.test']);
@mynetworks = ();                  # the load generator plays an outside MTA
\$inet_socket_bind = '127.0.0.1';
\$inet_socket_port = $AMAVIS_PORT;
@inet_acl = qw(127.0.0.1);
\$forward_method = 'smtp:[127.0.0.1]:$AMAVIS_BACK_PORT';
\$notify_method = \$forward_method;
\$QUARANTINEDIR = undef;
\$virus_quarantine_method = undef;
\$spam_quarantine_method = undef;
\$banned_files_quarantine_method = undef;
\$bad_header_quarantine_method = undef;
\$final_virus_destiny = D_DISCARD;
\$final_banned_destiny = D_DISCARD;
\$final_spam_destiny = D_PASS;
\$final_bad_header_destiny = D_PASS;
\$sa_tag_level_deflt = -999;       # X-Spam-Status on every message: a delivered mail shows SA ran
\$sa_tag2_level_deflt = 6.31;
\$sa_kill_level_deflt = 6.31;
\$sa_local_tests_only = 0;
\$sa_siteconfigpath = "\$MYHOME/sa-site";
\$sa_mail_body_size_limit = 200*1024;
\$enable_dkim_verification = 1;
\$enable_dkim_signing = 0;
\$banned_filename_re = new_RE(
  qr'\.[^./]*\.(exe|vbs|pif|scr|bat|cmd|com|cpl|dll)\.?\$'i,
  qr'\{[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\}?\$'i,
  qr'^application/x-msdownload\$'i,
  qr'^application/x-msdos-program\$'i,
  qr'^application/hta\$'i,
  qr'.\.(exe|vbs|pif|scr|bat|cmd|com|cpl)\$'i,
  qr'^\.(exe-ms)\$',
);
@av_scanners = (
  ['ClamAV-clamd', \&ask_daemon, ["CONTSCAN {}\n", "127.0.0.1:$STACK_CLAMD_PORT"],
   qr/\bOK\$/m, qr/\bFOUND\$/m, qr/^.*?: (?!Infected Archive)(.*) FOUND\$/m ],
);
@av_scanners_backup = ();
1;
EOF
    chown -R amavis:amavis "$AMAVIS_HOME" && chown -R root:root "$AMAVIS_HOME/etc"  # amavisd insists
}

amavis_postfix_config() {
    pf_configure "$PFA"
    pf_main "$PFA" <<EOF
relay_domains = school.test
relay_recipient_maps = $(pf_ldap_recipients "$PFA")
relay_transport = lmtp:inet:127.0.0.1:$STACK_LMTP_PORT
default_transport = error:only school.test here
content_filter = smtp-amavis:[127.0.0.1]:$AMAVIS_PORT
smtp-amavis_destination_concurrency_limit = 4
EOF
    pf_master "$PFA" <<EOF
127.0.0.1:$AMAVIS_SMTP_PORT inet n - n - - smtpd
  -o receive_override_options=no_address_mappings
smtp-amavis unix - - n - 4 smtp
  -o smtp_data_done_timeout=1200
  -o smtp_send_xforward_command=yes
  -o disable_dns_lookups=yes
  -o max_use=20
  -o smtp_discard_ehlo_keywords=pipelining
127.0.0.1:$AMAVIS_BACK_PORT inet n - n - - smtpd
  -o content_filter=
  -o relay_recipient_maps=
  -o smtpd_restriction_classes=
  -o smtpd_delay_reject=no
  -o smtpd_client_restrictions=permit_mynetworks,reject
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o smtpd_data_restrictions=reject_unauth_pipelining
  -o smtpd_end_of_data_restrictions=
  -o mynetworks=127.0.0.0/8
  -o smtpd_error_sleep_time=0
  -o smtpd_soft_error_limit=1001
  -o smtpd_hard_error_limit=1000
  -o smtpd_client_connection_count_limit=0
  -o smtpd_client_connection_rate_limit=0
  -o receive_override_options=no_header_body_checks,no_unknown_recipient_checks,no_milters
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
lmtp      unix  - - n - - lmtp
EOF
}

amavis_stack_up() {
    amavis_config
    amavis_postfix_config
    amavisd -c "$AMAVIS_HOME/etc/amavisd.conf" foreground >"$AMAVIS_HOME/stdout.log" 2>&1 &
    AMAVIS_PID=$!
    for _ in $(seq 150); do  # SpamAssassin compiles its rules before amavis listens
        (exec 3<>"/dev/tcp/127.0.0.1/$AMAVIS_PORT") 2>/dev/null && break
        kill -0 "$AMAVIS_PID" 2>/dev/null || { tail -n 20 "$AMAVIS_HOME"/*.log >&2; echo "amavisd exited" >&2; return 1; }
        sleep 0.4
    done
    pf_start "$PFA" "$AMAVIS_SMTP_PORT" "$AMAVIS_BACK_PORT"
}

amavis_stack_down() {
    pf_stop "$PFA"
    if [ -n "$AMAVIS_PID" ] && kill -0 "$AMAVIS_PID" 2>/dev/null; then
        kill -TERM "$AMAVIS_PID"
        wait "$AMAVIS_PID" 2>/dev/null || true
    fi
    AMAVIS_PID=
}

amavis_stack_cpu() {
    tree_cpu "postfix=$(cat "$PFA/spool/pid/master.pid" 2>/dev/null | tr -d ' ')" "amavis=$AMAVIS_PID"
}
