#!/usr/bin/env bash
# Installs whatever moed needs that this Debian 12 machine lacks (apt-get; via sudo when not
# root). Safe to run often: it checks with dpkg first and touches apt only when something is
# missing. CUDA is optional and never installed here: the build uses nvcc when it finds one.
#   install-deps.sh           what building and running moed needs (make demo)
#   install-deps.sh --tests   and what the tests need besides (make check): a Prometheus
#                             server, a headless browser, Python's gRPC, ...
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config   # toolchain
  libopenblas-openmp-dev             # BLAS for every matrix product (OpenMP build)
  libsentencepiece-dev               # learned tokenizers (moectl tokenizer train, data.tokenizer)
  libcjson-dev                       # JSON: safetensors headers, config files
  libyaml-dev                        # YAML (and JSON) job specs
  fortunes                           # the demo's English corpus (/usr/share/games/fortunes)
  libgrpc-dev                        # gRPC C core: every RPC between the processes
  libabsl-dev                        # Abseil (gRPC's own): its mutex deadlock detection switched off
  libprotobuf-c-dev                  # protobuf-c runtime for the generated messages
  protobuf-c-compiler                # protoc-c: proto/*.proto to C at build time
  libuv1-dev                         # the daemons' event loops and timers
  librocksdb-dev                     # the coordinator's durable job store
  libssl-dev                         # libcrypto: SHA-256 of model transfers; libssl: TLS diagnosis
  openssl                            # self-signed certificates (moectl cluster up --tls)
  libopenmpi-dev openmpi-bin         # the mpi data-plane backend (a pod = one mpirun job)
  libcairo2-dev                      # moectl plot: SVG and PNG drawing
  fonts-dejavu-core                  # moectl plot: the font of its labels
  libmicrohttpd-dev                  # the coordinator's HTTP port: /metrics and the live page
  uthash-dev                         # hash tables (header-only): the coordinator's indexes
  libsystemd-dev                     # sd_notify: Type=notify units (optional: builds without)
)
test_pkgs=(
  python3-numpy                      # an independent NumPy implementation of the model
  python3-grpcio                     # a stock gRPC client that is not part of moed
  python3-protobuf                   # its messages, generated from proto/moed.proto
  protobuf-compiler                  # protoc --python_out for that client
  python3-pil                        # reading the PNG that moectl plot draws
  prometheus                         # a real Prometheus server scrapes the coordinator
  chromium chromium-driver           # the live page in a headless browser
  python3-selenium                   #   driven through chromedriver
  iproute2                           # ip netns: the emulated hosts of cli_multihost and cli_slurm
  systemd                            # systemd-analyze verify on deploy/systemd's units
  slurm-wlm munge                    # a Slurm cluster runs deploy/slurm/moed.sbatch (cli_slurm)
  python3-kubernetes python3-yaml    # deploy/k8s's manifests checked against the API's models
)
[ "${1:-}" = --tests ] && pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
echo "install-deps: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# the prometheus package starts a system-wide server on :9090 where systemd runs; the tests
# start their own on 127.0.0.1, so that one is stopped and left disabled
if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null &&
   systemctl is-system-running >/dev/null 2>&1; then
  $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
# likewise Slurm's and munge's daemons: the Slurm test runs its own, with its own key and config
if [[ " ${missing[*]} " == *" slurm-wlm "* ]] && command -v systemctl >/dev/null &&
   systemctl is-system-running >/dev/null 2>&1; then
  $sudo systemctl disable --now slurmctld slurmd munge >/dev/null 2>&1 || true
fi
