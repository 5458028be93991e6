#!/usr/bin/env bash
# deploy/k8s (base, tls, submit), validated offline (there is no cluster here, and no container runtime): every
# manifest through the typed models of the Kubernetes Python client, the objects checked
# against each other and the daemons' command lines against the built binaries' --help
# (tests/k8s_validate.py says what is checked); then each check made to fail on a broken copy
# of the manifests, and, where kubectl is installed, kustomize's rendering compared with the
# validator's (tests/k8s_validate_test.py). Starts nothing; $1 (moectl) is found in the build.
set -u
py=/usr/bin/python3 # Debian's python, where python3-kubernetes lives (not a pyenv one on PATH)
if ! "$py" -c 'import kubernetes, yaml' 2>/dev/null; then
  echo "FAIL needs python3-kubernetes and python3-yaml (deploy/install-deps.sh --tests)"
  exit 1
fi
exec "$py" "$MOE_SOURCE_DIR/tests/k8s_validate_test.py" --bin "$MOE_BUILD_DIR/bin" \
  "$MOE_SOURCE_DIR/deploy/k8s"
