#!/usr/bin/env bash
# Installs andon-agent on Debian / Raspberry Pi OS (Python 3.11; amd64, arm64 or 32-bit ARM) as a systemd service:
#   sudo ./systemd/install.sh [--opcua | --no-opcua]      (from a checkout of the source)
# --opcua installs the OPC UA stack too (the `opcua` extra: asyncua, cryptography, cffi); --no-opcua leaves it
# out (a Modbus-only gateway). Without either, a new installation gets OPC UA and an upgrade keeps what it has.
# When pip would have to build a package from source (cffi on 32-bit ARM: PyPI has no wheel of it for armv7),
# the script installs the Debian packages the build needs (gcc libc6-dev libffi-dev python3-dev), and removes
# exactly the packages it added once the build is done.
# It creates the system user andon-agent, a virtual environment in /opt/andon-agent, the config
# /etc/andon-agent/agent.toml (from config/example.toml, if there is none yet), an empty token file
# /etc/andon-agent/token, state in /var/lib/andon-agent, and enables the unit. Run it again to upgrade.
set -euo pipefail
usage() { echo "usage: sudo $0 [--opcua | --no-opcua]"; }
opcua=""
for arg in "$@"; do
  case $arg in
    --opcua) opcua=yes ;;
    --no-opcua) opcua=no ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
src=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/andon-agent
py=$prefix/bin/python
build_pkgs="gcc libc6-dev libffi-dev python3-dev"

if ! python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv
fi
getent group andon-agent >/dev/null || groupadd --system andon-agent
getent passwd andon-agent >/dev/null || useradd --system --gid andon-agent --groups dialout \
  --home-dir /var/lib/andon-agent --no-create-home --shell /usr/sbin/nologin andon-agent

has() { "$py" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$1" 2>/dev/null; }
if [ -z "$opcua" ]; then  # an upgrade keeps what it has; a new installation gets OPC UA
  if [ -x "$py" ] && has andon-agent && ! has asyncua; then opcua=no; else opcua=yes; fi
fi
target=$src
[ "$opcua" = yes ] && target="${src}[opcua]"

[ -x "$py" ] || python3 -m venv "$prefix"
"$py" -m pip install -q --disable-pip-version-check --upgrade pip

# What would pip build from source? (The dry run resolves, with the system's pip configuration, e.g.
# piwheels on Raspberry Pi OS, and builds nothing.)
work=$(mktemp -d)
added=""  # the Debian packages this run installed for a build, removed again when it is done (or failed)
remove_added() {
  if [ -n "$added" ]; then
    echo "removing the build packages again: $added"
    # shellcheck disable=SC2086  # a list of package names
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq $added >/dev/null
    added=""
  fi
}
trap 'remove_added; rm -rf "$work"' EXIT
"$py" -m pip install -q --disable-pip-version-check --dry-run --report "$work/plan.json" --upgrade "$target"
sdists=$("$py" - "$work/plan.json" <<'PY'
import json, sys
plan = json.load(open(sys.argv[1]))["install"]
print(" ".join(i["metadata"]["name"] for i in plan
               if "dir_info" not in i["download_info"] and not i["download_info"]["url"].endswith(".whl")))
PY
)
if [ -n "$sdists" ]; then
  installed() { dpkg-query -W -f '${Status} ${Package}\n' | awk '$3 == "installed" { print $4 }' | sort; }
  installed > "$work/before"
  echo "no wheel of $sdists for this platform: installing $build_pkgs to build it"
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $build_pkgs >/dev/null
  added=$(installed | comm -13 "$work/before" - | tr '\n' ' ')
fi
"$py" -m pip install -q --disable-pip-version-check --upgrade "$target"
remove_added
install -m 0644 "$src/README.md" "$prefix/README.md"
if [ "$opcua" = yes ]; then echo "installed with OPC UA"; else echo "installed without OPC UA (Modbus only)"; fi

install -d -m 0750 -o root -g andon-agent /etc/andon-agent
if [ ! -e /etc/andon-agent/agent.toml ]; then
  sed 's|^state_dir = .*|state_dir = "/var/lib/andon-agent"|' "$src/config/example.toml" > /etc/andon-agent/agent.toml
  chmod 0640 /etc/andon-agent/agent.toml
  chgrp andon-agent /etc/andon-agent/agent.toml
  fresh_config=1
fi
[ -e /etc/andon-agent/token ] || install -m 0600 -o root -g root /dev/null /etc/andon-agent/token

install -m 0644 "$src/systemd/andon-agent.service" /etc/systemd/system/andon-agent.service
systemd_up=""
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable andon-agent.service >/dev/null
  systemd_up=1
elif command -v systemctl >/dev/null; then  # a chroot or an image build: the unit starts at the next boot
  systemctl enable andon-agent.service >/dev/null
fi
if [ -n "${fresh_config:-}" ]; then
  echo "Installed. Edit /etc/andon-agent/agent.toml (and put the upstream token in /etc/andon-agent/token),"
  [ "$opcua" = no ] && echo "remove its example OPC UA machine (protocol = \"opcua\") or run this again with --opcua,"
  echo "check it with: $prefix/bin/andon-agent check --config /etc/andon-agent/agent.toml"
  echo "then start it: systemctl start andon-agent; logs: journalctl -u andon-agent -f"
elif ! checked=$("$prefix/bin/andon-agent" check --config /etc/andon-agent/agent.toml 2>&1); then
  printf '%s\n' "$checked" | grep -E '^(error|andon-agent): ' >&2 || true  # what check found, not the whole plan
  echo "Upgraded, but /etc/andon-agent/agent.toml does not pass 'andon-agent check': the service was not restarted" >&2
  exit 1
elif [ -n "$systemd_up" ]; then
  systemctl restart andon-agent.service && echo "Upgraded and restarted; status: systemctl status andon-agent"
else
  echo "Upgraded; systemd is not running here, so nothing was restarted"
fi
