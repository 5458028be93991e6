/*
 * tunables.c — the data plane's environment knobs, as one table read once per process.
 *
 * Owns: every MOE_COMM_* variable (type, default, bounds, help: comm_knobs), and reading them
 * once, under pthread_once, so that every thread and every comm of a process sees the same
 * values; comm_open refuses to open with a value that does not parse.
 * Never: reads the environment anywhere else in worker/comm, or changes a value once read.
 */
#include "comm_internal.h"

#include <pthread.h>
#include <stdio.h>

const struct knob comm_knobs[] = {
    {NULL, "MOE_COMM_SHM", KNOB_BOOL, KNOB_AT(struct comm_tunables, shm), "1", 0, 0, NULL, NULL,
     "0: never use shared memory between peers of one host (plain tcp)"},
    {NULL, "MOE_COMM_SHM_RING_MB", KNOB_INT, KNOB_AT(struct comm_tunables, shm_ring_mb), "4", 1,
     1024, NULL, "MB", "size of each shared-memory ring (one per direction, channel and local pair)"},
    {NULL, "MOE_COMM_CMA", KNOB_BOOL, KNOB_AT(struct comm_tunables, cma), "1", 0, 0, NULL, NULL,
     "0: never read a local peer's memory directly; every byte goes through the rings"},
    /* Measured with bench_alltoall: at 16 KiB per peer one copy and an acknowledgement
     * already beat two copies through the ring. */
    {NULL, "MOE_COMM_CMA_MIN", KNOB_LONG, KNOB_AT(struct comm_tunables, cma_min), "8192", 1,
     (double)((long)1 << 40), NULL, "BYTES", "smallest payload sent by descriptor (read by the "
     "receiving peer straight from the sender's buffer)"},
    {NULL, "MOE_COMM_SPIN_US", KNOB_DOUBLE, KNOB_AT(struct comm_tunables, spin_us), "100", 0, 1e6,
     NULL, "US", "how long a waiting side yields the core before it sleeps in poll()"},
    {NULL, "MOE_COMM_ENCRYPT", KNOB_BOOL, KNOB_AT(struct comm_tunables, encrypt), "0", 0, 0, NULL,
     NULL, "1: encrypt every tcp link (AES-256-GCM per frame) for networks nobody vouches for; "
     "shared memory between peers of one host stays as is"},
};
const int comm_n_knobs = (int)(sizeof comm_knobs / sizeof comm_knobs[0]);

static struct comm_tunables loaded;
static char load_error[256]; // "" when every value parsed
static pthread_once_t load_once = PTHREAD_ONCE_INIT;

static void load(void) {
    if (knobs_load_env(comm_knobs, comm_n_knobs, &loaded) != MOE_OK)
        snprintf(load_error, sizeof load_error, "comm: %s", moe_errmsg());
}

const struct comm_tunables *comm_tunables(void) {
    pthread_once(&load_once, load);
    if (load_error[0]) {
        moe_fail(MOE_EINVAL, "%s", load_error);
        return NULL;
    }
    return &loaded;
}
