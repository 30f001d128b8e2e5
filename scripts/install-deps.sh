#!/usr/bin/env bash
# Installs what foldertrack's demo and tests need on Debian/Ubuntu: Dovecot (IMAP), only if missing.
set -euo pipefail
if [ -x /usr/sbin/dovecot ] && command -v doveadm >/dev/null 2>&1; then
  exit 0
fi
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y dovecot-imapd
