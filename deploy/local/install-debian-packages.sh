#!/usr/bin/env bash
# Installs the Debian packages the local stack needs, and only those that are missing.
# Daemons are started by `poststelle up` as our own processes, so the packages' system services
# are kept from starting during the install (policy-rc.d), and Postfix and slapd get no
# configuration of their own.
set -euo pipefail

PACKAGES=(
  default-jre-headless   # the Kafka broker
  maven                  # resolves the Kafka jars from Maven Central
  dovecot-core           # mailbox server (LMTP)
  dovecot-lmtpd
  postfix                # smtp-sink (the local smarthost), smtp-source (benchmarks)
  postfix-ldap           # the benches' private Postfix looks recipients up in the stack's slapd
  amavisd-new            # bench/pipeline.sh's comparison: Postfix → amavisd-new → Dovecot
  spamassassin           # ... with SpamAssassin inside amavis (and bench/spamassassin_accuracy.py)
  libmail-spf-perl       # SpamAssassin's SPF and DMARC plugins (recommended, not pulled in here)
  libmail-dmarc-perl
  spamd                  # spamd, spamc: bench/spamassassin_accuracy.py
  spamc
  openssl                # the self-signed certificate of the ingress's TLS (STARTTLS on 25 and 587, 465)
  swaks                  # sending test mail
  libnet-ssleay-perl     # swaks --tls / --tls-on-connect (submission on 2587 and 2465)
  libio-socket-ssl-perl
  nsd                    # authoritative DNS for the test zones (DNSBL, PTR, MX, SPF, DKIM)
  slapd                  # the directory (OpenLDAP) with the demo school
  ldap-utils             # ldapsearch, ldapwhoami, ... for looking into it
  clamav-daemon          # clamd, the virus scanner (project signatures only: deploy/local/clamav/)
  clamav                 # clamscan, sigtool: for checking signatures by hand
  chromium               # the headless browser of the quarantine portal's test (tests/integration/test_portal.py)
  chromium-driver        # chromedriver, which Selenium drives it with
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  # any Java runtime will do for the broker
  [[ $pkg == default-jre-headless ]] && command -v java >/dev/null 2>&1 && continue
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "installing Debian packages: ${missing[*]}"
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee $policy >/dev/null && $SUDO chmod +x $policy && created_policy=1
fi
cleanup() { [[ $created_policy -eq 1 ]] && $SUDO rm -f $policy; true; }
trap cleanup EXIT
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
# slapd: no system database (dc=nodomain in /etc/ldap/slapd.d); ours is rendered per state dir
echo "slapd slapd/no_configuration boolean true" | $SUDO debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
