#!/usr/bin/env bash
# Installs andon-agent on Debian / Raspberry Pi OS (Python 3.11, amd64 or arm64) as a systemd service:
#   sudo ./systemd/install.sh            (from a checkout of the source)
# It creates the system user andon-agent, a virtual environment in /opt/andon-agent, the config
# /etc/andon-agent/agent.toml (from config/example.toml, if there is none yet), an empty token file
# /etc/andon-agent/token, state in /var/lib/andon-agent, and enables the unit. Run it again to upgrade.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
src=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/andon-agent

if ! python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv
fi
getent group andon-agent >/dev/null || groupadd --system andon-agent
getent passwd andon-agent >/dev/null || useradd --system --gid andon-agent --groups dialout \
  --home-dir /var/lib/andon-agent --no-create-home --shell /usr/sbin/nologin andon-agent

[ -x "$prefix/bin/python" ] || python3 -m venv "$prefix"
"$prefix/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$prefix/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$src"
install -m 0644 "$src/README.md" "$prefix/README.md"

install -d -m 0750 -o root -g andon-agent /etc/andon-agent
if [ ! -e /etc/andon-agent/agent.toml ]; then
  sed 's|^state_dir = .*|state_dir = "/var/lib/andon-agent"|' "$src/config/example.toml" > /etc/andon-agent/agent.toml
  chmod 0640 /etc/andon-agent/agent.toml
  chgrp andon-agent /etc/andon-agent/agent.toml
  fresh_config=1
fi
[ -e /etc/andon-agent/token ] || install -m 0600 -o root -g root /dev/null /etc/andon-agent/token

install -m 0644 "$src/systemd/andon-agent.service" /etc/systemd/system/andon-agent.service
systemctl daemon-reload
systemctl enable andon-agent.service >/dev/null
if [ -n "${fresh_config:-}" ]; then
  echo "Installed. Edit /etc/andon-agent/agent.toml (and put the upstream token in /etc/andon-agent/token),"
  echo "check it with: $prefix/bin/andon-agent check --config /etc/andon-agent/agent.toml"
  echo "then start it: systemctl start andon-agent; logs: journalctl -u andon-agent -f"
elif "$prefix/bin/andon-agent" check --config /etc/andon-agent/agent.toml >/dev/null; then
  systemctl restart andon-agent.service && echo "Upgraded and restarted; status: systemctl status andon-agent"
else
  echo "Upgraded, but /etc/andon-agent/agent.toml does not pass 'andon-agent check': the service was not restarted" >&2
  exit 1
fi
