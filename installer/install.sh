#!/bin/sh
# Install AppPacCap as a systemd service (Debian/Ubuntu, as root):
#   sh installer/install.sh
set -e
HERE="$(cd "$(dirname "$0")/.." && pwd)"
sh "$HERE/installer/debs.sh" libpcap-dev gcc python3-dev python3-venv libndpi4.2
python3 -m venv /opt/apppaccap/venv
/opt/apppaccap/venv/bin/pip install -q --upgrade pip
/opt/apppaccap/venv/bin/pip install -q "$HERE"
mkdir -p /var/lib/apppaccap/export
# With authentication off (the loopback default) root and the members of this group call
# without a token; every other local account must log in (apppaccap serve --local-group).
getent group apppaccap >/dev/null || groupadd --system apppaccap
install -m 0644 "$HERE/installer/apppaccap.service" /etc/systemd/system/apppaccap.service
systemctl daemon-reload
systemctl enable --now apppaccap.service
echo "AppPacCap is running on http://127.0.0.1:8733/ (systemctl status apppaccap)"
echo "Local accounts other than root need a login, unless in group apppaccap:"
echo "  usermod -aG apppaccap NAME   or   apppaccap user add NAME --data-dir /var/lib/apppaccap"
