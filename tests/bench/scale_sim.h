/*
 * scale_sim.h — simulated workers for the scale harness (bench_scale.c): what the harness's
 * processes share.
 *
 * Owns: the shared record of each simulated worker (one MAP_SHARED array, made before the
 * simulator processes fork) through which the orchestrating process follows them (registered,
 * bound, which RunSlot came when) and loses some (dead); and the simulator process's entry.
 * A simulator process plays many workers over real gRPC: each registers with the cluster
 * token and gets its own id and credential, heartbeats at the interval the coordinator
 * gives, re-registers when a restarted coordinator asks, and serves the Worker service at an
 * address of its own (one listening port each, all in one gRPC server: the coordinator's
 * calls carry the worker's credential, which says whom they are for). RunSlot is answered
 * like an idle worker answers it and "trains" by reporting one step per report interval
 * without computing (after checking that the binding names its own address at its rank);
 * FenceSlot answers with the state a real slot holds (its live step and
 * the previous one); StopJob (the coordinator's reachability probe too) stops.
 * Never: computes, or opens a data plane: the coordinator is what is measured.
 */
#ifndef MOE_BENCH_SCALE_SIM_H
#define MOE_BENCH_SCALE_SIM_H

#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#define SIM_CRED_MAX 128

struct sim_shared {
    _Atomic int registrations;  // answered RegisterWorker calls (first and again)
    _Atomic int dead;           // set by the orchestrator: silent, and every call UNAVAILABLE
    _Atomic int runslots;       // RunSlots accepted
    _Atomic int restores;       // ... of which restores
    _Atomic int64_t runslot_ns; // when the last was accepted (CLOCK_MONOTONIC)
    _Atomic uint64_t epoch;     // its epoch
    _Atomic int pod, slot;      // the slot it plays (pod -1: none)
    _Atomic int64_t step;       // its live step
    _Atomic int stops;          // StopJobs (or heartbeat answers) that stopped its job
    _Atomic int misbound;       // RunSlots whose addresses did not name it at its own rank
    _Atomic long idle_ms;       // the idle heartbeat interval the coordinator last gave it
    char id[24];                // written before the first registration is counted
    char credential[SIM_CRED_MAX];
};

struct sim_config {
    const char *coordinator;   // host:port
    const char *cluster_token;
    int first, count;          // the workers [first, first + count) of the shared array
    int pod_size;              // worker i is in physical pod i / pod_size
    long report_ms;            // one step report per this many ms while running
    struct sim_shared *shared;
};

/* The simulator process: plays its workers until SIGTERM. Returns the exit status. */
int sim_main(const struct sim_config *cfg);

static inline int64_t sim_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#endif
