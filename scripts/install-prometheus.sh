#!/bin/sh
# Install the real Prometheus server (Debian's `prometheus` package) for the metrics tests.
#
# Idempotent: does nothing when a `prometheus` binary is already there. The tests start their
# own Prometheus on a free port, so the system service the package may start is stopped again:
# it would hold port 9090 and scrape nothing useful.
set -eu

PACKAGE=prometheus

if command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "prometheus is not installed; install the Debian package '$PACKAGE' as root:" >&2
    echo "  apt-get update && apt-get install --no-install-recommends $PACKAGE" >&2
    exit 1
fi

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$PACKAGE"

# The package's postinst starts the service unless a policy-rc.d forbids it (as in most
# containers). Stop it whichever way it was started; nothing else of ours is touched.
if [ -d /run/systemd/system ]; then
    systemctl stop prometheus.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi

/usr/bin/prometheus --version | head -n 1
