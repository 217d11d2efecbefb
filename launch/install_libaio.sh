#!/usr/bin/env bash
# NVMe offload (ds_configs/zero3_nvme*.json) needs DeepSpeed's async I/O op, which compiles against libaio.
# Install its headers where we can (root with apt-get); otherwise say what to install and carry on: nothing but
# NVMe offload (and its test) needs it.
set -uo pipefail
if [ -e /usr/include/libaio.h ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing libaio-dev (for NVMe offload)"
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libaio-dev >/dev/null 2>&1 \
     || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libaio-dev >/dev/null 2>&1; }; then
    exit 0
  fi
fi
echo "note: libaio headers not found and not installable here; NVMe offload needs them" \
     "(Debian/Ubuntu: apt-get install libaio-dev; RHEL/Fedora: dnf install libaio-devel)" >&2
exit 0
