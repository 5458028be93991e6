#!/usr/bin/env bash
# The scale harness at a small size, asserting correctness (not speed): 578 simulated workers
# (tests/bench/scale_sim.c, real gRPC) and one real coordinator with its real RocksDB; a
# 16 x 32 job (512 slots: more than GetJob's default page and WatchJob's whole-mesh limit) is
# bound with every slot played by exactly one worker; GetJob's and GetCluster's pages list
# every slot and worker once and agree with the summaries; WatchJob, ListJobs and the live
# page's API (GET /api/jobs/ID) send the mesh by pod, without bindings or slots; a
# lost worker, then four lost at once, are replanned onto spares (restored) in a new epoch;
# after a SIGKILL and restart of the coordinator every live worker registers again and keeps
# its slot (no slot stopped, the epoch unchanged). With a budget of 50 idle heartbeats a
# second, the 578 idle workers are told an interval of 11.6 s (not the fixed 5 s), and one of
# them gone silent is declared dead within the timeout plus that interval while none of the
# others is. bench_scale --check exits non-zero when any of that fails.
set -euo pipefail
build="${MOE_BUILD_DIR:-$(cd "$(dirname "$1")/.." && pwd)}"
# A heartbeat timeout of 10 s: on a loaded machine the simulators may heartbeat late, and a
# worker declared dead by that would fail the check for a reason that is not the coordinator's.
exec "$build/bin/bench_scale" --check --heartbeat-timeout-ms 10000 --pod-size 34 --job 16x32 \
    --lose 4 --idle-heartbeats-per-s 50 578
