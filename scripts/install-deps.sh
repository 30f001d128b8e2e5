#!/usr/bin/env bash
# Installs what foldertrack's demo and tests need on Debian/Ubuntu, only what is missing:
# Dovecot (IMAP, and LMTP so the test SMTP server can deliver into it) and Python's aiosmtpd
# (the real SMTP server the outgoing-mail tests send through), and PostgreSQL (the tests start
# private clusters of their own with its initdb; the package's own cluster is not used), and
# Chromium with its chromedriver (the web pages' browser test, tests/browser.rs).
set -euo pipefail
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
if ! [ -x /usr/sbin/dovecot ] || ! command -v doveadm >/dev/null 2>&1 || ! [ -x /usr/lib/dovecot/lmtp ]; then
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y dovecot-imapd dovecot-lmtpd
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y postgresql
fi
if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium chromium-driver
fi
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  python3 -m pip install --quiet aiosmtpd
fi
