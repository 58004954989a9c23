# Sourced by bench/ingress.sh and bench/pipeline.sh (after bench/stack.sh): private Postfix instances
# for the comparisons, each with its own config directory, queue and log under var/bench/, on loopback
# ports, without chroot. Needs root (master(8) runs as root and drops to the postfix user).
#
#   pf_configure DIR             empty DIR, write DIR/etc/main.cf with the settings every instance
#                                shares (append more with pf_main DIR), DIR/etc/master.cf with
#                                Debian's internal services (append listeners with pf_master DIR)
#   pf_main DIR / pf_master DIR  append stdin to main.cf / master.cf
#   pf_ldap_recipients DIR       DIR/etc/recipients.cf: the recipient lookup of the ingress's
#                                `recipient` check against the bench stack's slapd; prints
#                                "ldap:DIR/etc/recipients.cf" for relay_recipient_maps
#   pf_start DIR PORT...         start it, wait until every PORT answers
#   pf_stop DIR                  stop it (no-op when it was never configured)
#   expect_rcpt_reply PORT ADDRESS CODE   RCPT TO:<ADDRESS> gets a reply starting with CODE (swaks),
#                                or the bench stops: proves the recipient lookup really happens

pf_configure() {
    local dir=$1
    rm -rf "$dir" && mkdir -p "$dir/etc" "$dir/spool" "$dir/data" && chown postfix "$dir/data"
    cat >"$dir/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $dir/spool
data_directory = $dir/data
maillog_file_prefixes = $dir
maillog_file = $dir/maillog
myhostname = bench-postfix.invalid
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
EOF
    # Debian's stock internal services, without chroot; listeners come from the caller
    cat >"$dir/etc/master.cf" <<EOF
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
}

pf_main() { cat >>"$1/etc/main.cf"; }
pf_master() { cat >>"$1/etc/master.cf"; }

pf_ldap_recipients() {
    # the filter of pipeline/clients/directory.py's `lookup` (_ADDRESS_FILTER): a person or a group
    # by its mail or mailLocalAddress; anonymous bind, as the ingress ([ldap] has no bind_dn here)
    local groups
    groups=$("$PY" -c 'from pipeline.clients.directory_entries import GROUP_CLASSES as g; print("".join(f"(objectClass={c})" for c in g))')
    cat >"$1/etc/recipients.cf" <<EOF
server_host = ldap://127.0.0.1:$STACK_LDAP_PORT
search_base = dc=school,dc=test
version = 3
bind = no
query_filter = (&(|(objectClass=inetOrgPerson)(|$groups))(|(mail=%s)(mailLocalAddress=%s)))
result_attribute = mail
EOF
    echo "ldap:$1/etc/recipients.cf"
}

pf_start() {
    local dir=$1 port
    shift
    postfix -c "$dir/etc" check >/dev/null 2>&1 || true  # creates the queue directories
    # after the bench stack ran, `postfix start` sometimes failed in postfix-script ("mail system
    # startup failed", nothing else logged; seen on 2026-12-04), most likely a port of ours taken as
    # a client's source port (bench/stack.sh now keeps the ports below the ephemeral range); if it
    # fails, start master directly, as postfix-script would (what `postfix start` said is kept in
    # $dir/start.log; postconf is asked with -c, as a fresh machine has no /etc/postfix/main.cf)
    postfix -c "$dir/etc" start >"$dir/start.log" 2>&1 ||
        "$(postconf -c "$dir/etc" -h daemon_directory)/master" -c "$dir/etc" -w ||
        echo "private Postfix $dir: master(8) did not start" >&2
    for port in "$@"; do
        for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue 2; sleep 0.2; done
        echo "private Postfix $dir did not listen on $port; see $dir/maillog" >&2 && tail -5 "$dir/maillog" >&2
        return 1
    done
}

pf_stop() { [ -f "$1/etc/main.cf" ] && postfix -c "$1/etc" stop >/dev/null 2>&1 || true; }

expect_rcpt_reply() {  # PORT ADDRESS CODE
    local reply
    reply=$(swaks --server 127.0.0.1 --port "$1" --from bench@example.org --to "$2" --quit-after RCPT 2>&1 |
            awk '/-> RCPT TO/ { rcpt = 1; next } rcpt && /^ *<[-~*]* +[0-9][0-9][0-9]/ { sub(/^ *<[-~*]* +/, ""); print; exit }' || true)
    if [[ $reply != "$3"* ]]; then
        echo "RCPT TO:<$2> on port $1: expected $3, got: ${reply:-no reply}" >&2
        return 1
    fi
    echo "  RCPT TO:<$2> on port $1: $reply"
}
