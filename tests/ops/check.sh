#!/usr/bin/env bash
# The operations checks of issue 11 that are not Rust tests: the alerting rules (promtool
# check rules / test rules), the Kubernetes manifests (kubernetes-validate --strict, on the
# plain files and, where kubectl or kustomize is installed, on the kustomize builds of the base
# and of the unix-socket overlay), a
# /metrics page of a real Suture (promtool check metrics), the metrics the dashboard and the
# rules query against what Suture exports, the sample configurations (suture check-config),
# the compose trial's Prometheus configuration and every path and port docker/ names
# (check_files.py). No Docker engine runs here: images are neither pulled nor built.
#
# Installs what it needs (Debian's prometheus package, kubernetes-validate and PyYAML from
# PyPI); builds the suture binary if SUTURE_BIN is unset and target/debug/suture is missing.
# Runs every check, then exits non-zero if any failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# free_port
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v promtool >/dev/null 2>&1; then
    echo "check.sh: installing the Debian package prometheus (promtool)"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends prometheus \
        || { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends prometheus; }
fi
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q pyyaml
command -v kubernetes-validate >/dev/null 2>&1 || python3 -m pip install -q kubernetes-validate

bin=${SUTURE_BIN:-target/debug/suture}
[ -x "$bin" ] || cargo build --bin suture

work=$(mktemp -d)
suture_pid=""
cleanup() {
    [ -n "$suture_pid" ] && kill "$suture_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

failed=()
run() {
    echo "== $*"
    if "$@"; then echo "-- ok"; else echo "-- FAILED: $*"; failed+=("$*"); fi
}

run promtool check rules deploy/prometheus/suture-rules.yaml
run promtool test rules deploy/prometheus/suture-rules_test.yaml

# PodMonitor has no built-in schema: kubernetes-validate warns about it, check_files.py checks
# its shape.
run kubernetes-validate --strict deploy/base/configmap.yaml deploy/base/secret.yaml \
    deploy/base/deployment.yaml deploy/base/podmonitor.yaml
# The base and the unix-socket overlay (its patches are partial objects: only the build can be
# validated).
for kdir in deploy/base deploy/overlays/unix-socket; do
    out="$work/built-$(basename "$kdir").yaml"
    built=""
    if command -v kustomize >/dev/null 2>&1 && kustomize build "$kdir" >"$out" 2>/dev/null; then
        built=kustomize
    elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize "$kdir" >"$out" 2>/dev/null; then
        built="kubectl kustomize"
    fi
    if [ -n "$built" ]; then
        echo "check.sh: built $kdir with $built"
        run kubernetes-validate --strict "$out"
    else
        echo "check.sh: NOTE: neither kustomize nor kubectl here (or the build of $kdir failed); its kustomize build was not validated"
    fi
done

# The sample configurations load.
python3 - "$work" <<'PY'
import sys, yaml
cm = yaml.safe_load(open("deploy/base/configmap.yaml"))
open(sys.argv[1] + "/deploy-suture.toml", "w").write(cm["data"]["suture.toml"])
cm = yaml.safe_load(open("deploy/overlays/unix-socket/configmap-patch.yaml"))
open(sys.argv[1] + "/deploy-unix-suture.toml", "w").write(cm["data"]["suture.toml"])
PY
run env APP_DB_PASSWORD=x "$bin" check-config --config "$work/deploy-suture.toml"
run env APP_DB_PASSWORD=x "$bin" check-config --config "$work/deploy-unix-suture.toml"
run env APP_DB_PASSWORD=x "$bin" check-config --config docker/suture.toml
run env APP_DB_PASSWORD=x "$bin" check-config --config suture.example.toml

# The compose trial's Prometheus, with the files laid out as compose mounts them.
mkdir -p "$work/prometheus"
cp docker/prometheus.yml "$work/prometheus/prometheus.yml"
cp deploy/prometheus/suture-rules.yaml "$work/prometheus/suture-rules.yaml"
run promtool check config "$work/prometheus/prometheus.yml"

# A real Suture's /metrics, right after start: every series exists before any event. Its
# backend is a closed port; no database is needed for this.
admin=$(free_port)
listen=$(free_port)
closed=$(free_port)
cat >"$work/suture.toml" <<TOML
[admin]
listen = "127.0.0.1:$admin"
[pools.app]
listen = "127.0.0.1:$listen"
servers = ["127.0.0.1:$closed"]
tls = "disable"
[pools.app.users.app]
password = "x"
TOML
"$bin" --config "$work/suture.toml" >"$work/suture.log" 2>&1 &
suture_pid=$!
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$admin/metrics" -o "$work/metrics.txt" 2>/dev/null && break
    sleep 0.1
done
if [ -s "$work/metrics.txt" ]; then
    check_metrics() { promtool check metrics <"$work/metrics.txt"; }
    run check_metrics
else
    echo "-- FAILED: no /metrics from suture; log:"; cat "$work/suture.log"
    failed+=("suture /metrics")
fi
run python3 tests/ops/check_files.py "$work/metrics.txt"

if [ "${#failed[@]}" -gt 0 ]; then
    echo "tests/ops/check.sh: ${#failed[@]} check(s) failed:" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "tests/ops/check.sh: every check passed"
