/*
 * comm.h — the data plane: collectives and point-to-point transfers between the worker
 * processes of one job, in one epoch.
 *
 * Owns: the connections between the ranks of a job (rank = pod * slots + slot), their
 * authentication (the job's data-plane key, bound to the job, the epoch and both ranks) and
 * optional encryption (docs/dataplane.md), every byte of tensor data that moves between workers,
 * and the promise that no operation ever hangs: each one returns MOE_OK, or an error within
 * the configured bound when a peer dies, stalls or the epoch is aborted.
 * Never: decides who the peers are (the coordinator does, per epoch), knows what the bytes
 * mean (the trainer does), or touches the coordinator. It reads no spec.
 *
 * Backends behind this one interface:
 *   tcp  every pair of ranks has its own sockets (one per channel), connected directly with
 *        addresses handed out by the coordinator; peers on the same host may move bulk data
 *        through shared memory instead. Failure domain: one worker.
 *   mpi  ranks of the same pod talk through Open MPI (the pod is one mpirun job, MPI rank =
 *        slot); ranks of different pods through tcp. Failure domain: the whole pod, because
 *        Open MPI 4.1 can neither report a dead rank nor repair a communicator: a stalled
 *        MPI operation makes the rank abort its MPI job after the timeout.
 *
 * Channels: a comm has COMM_CHANNELS independent channels. Operations on different channels
 * may run at the same time from different threads (the trainer's MoE all-to-alls on channel
 * 0 while a background thread all-reduces gradients on channel 1); operations on one channel
 * are issued by one thread at a time, in the same order on every member of the group.
 *
 * Groups: a collective runs over a group, an ordered list of ranks that every member passes
 * identically (the trainer builds "my pod" and "my slot across pods"). Results depend only on
 * the group's order, never on timing: reductions add in the fixed tree order of tree_sum.h.
 *
 * Errors (moe_errmsg names the peer rank and what happened):
 *   MOE_EUNAVAILABLE  a peer closed or broke its connection, or made no progress for
 *                     timeout_s (a SIGSTOPped or hung peer)
 *   MOE_EAUTH         an encrypted frame failed authentication (tampered with on the way)
 *   MOE_EINVAL        sizes that disagree between peers, a rank outside the comm, ...
 *   MOE_EINTERNAL     comm_abort was called (the epoch is over)
 * After any error other than MOE_EINVAL the comm is broken: every later operation fails at
 * once, and the caller closes it and waits for the coordinator's next epoch.
 */
#ifndef MOE_COMM_H
#define MOE_COMM_H

#include "../../common/knobs.h"
#include "../../common/status.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define COMM_MAX_RANKS 256
#define COMM_ADDR_MAX 300
#define COMM_CHANNELS 3
#define COMM_KEY_BYTES 32

enum comm_backend { COMM_TCP = 0, COMM_MPI = 1 };

struct comm_config {
    enum comm_backend backend;
    int rank, size;         // this process's rank, and pods * slots
    int pods, slots;        // rank = pod * slots + slot
    uint64_t epoch;         // a connection of another epoch never authenticates
    const char *job_id;     // nor one of another job
    const uint8_t *key;     // (COMM_KEY_BYTES) the job's data-plane key; never sent: the link
                            // key derived from it, the job and the epoch is proven by HMAC
    int encrypt;            // 1: tcp links are encrypted (so they are with MOE_COMM_ENCRYPT=1,
                            // or when either end of a link asks); shared memory never is
    const char *const *peers; // (size) host:port of each rank's comm_listener (tcp), or NULL
                              // for ranks reached through MPI
    double timeout_s;       // no progress for this long on an operation: MOE_EUNAVAILABLE
    const atomic_int *cancel; // NULL, or set non-zero from another thread (the job was stopped
                            // or fenced): a tcp open in progress gives up within
                            // COMM_CANCEL_POLL_MS with MOE_EINTERNAL, as an aborted operation
                            // does, instead of waiting out its deadline (comm_abort reaches
                            // only a comm that is open)
    /* NULL, or called once, from a thread of the comm's own (watch.c), as soon as a tcp
     * peer's connection closes, or a same-host peer's process is seen exiting (before its
     * kernel has freed its memory and closed its sockets), while this rank computes or waits
     * anywhere: so that the fault is reported without waiting for the next operation or
     * check (comm_check_peers) to meet it. Reads no byte and changes no state of the comm:
     * operations still find the dead peer themselves. `why` names the rank; `exited`: the
     * process was seen exiting (certain), not only its connection closing. Not called
     * after comm_abort, nor during or after comm_close (which waits for a call in progress:
     * keep it short). */
    void (*on_peer_lost)(void *arg, int rank, bool exited, const char *why);
    void *on_peer_lost_arg;
};
#define COMM_CANCEL_POLL_MS 50

/* A rank's listening socket for the data plane. A worker opens one at startup, registers
 * its address with the coordinator, and keeps it for its lifetime: every comm it opens
 * accepts its peers' connections here. One comm_open at a time takes connections from it
 * (a second one waits); a connection that does not prove this job's and epoch's key at once
 * is closed without an answer. */
struct comm_listener;
moe_status comm_listener_open(struct comm_listener **l, const char *host_port); // "127.0.0.1:0"
const char *comm_listener_address(const struct comm_listener *l);              // "127.0.0.1:40123"
void comm_listener_close(struct comm_listener *l);

struct comm;

/* Connects to every other rank (or joins MPI for the pod's ranks) within timeout_s * 5 at
 * most. The mpi backend needs MPI initialised first (comm_mpi_init). `l` may be NULL when
 * no rank below this one is reached through tcp (rank 0, or a one-pod mpi comm).
 * Nothing a connection says fails the open: one that does not authenticate (another job,
 * epoch or key, garbage, silence) is closed silently, and a peer that does not answer is
 * dialled again, until the deadline: then MOE_EUNAVAILABLE names the missing rank. */
moe_status comm_open(struct comm **c, const struct comm_config *cfg, struct comm_listener *l);
/* From any thread: every pending and later operation fails with MOE_EINTERNAL, and the
 * peers' pending operations with this rank fail at once too (its links are shut down).
 * With the mpi backend a pending operation first settles the MPI transfers it posted: a pod
 * peer entering the same operation within timeout_s of the abort completes it. A later
 * operation posts nothing, so a pod peer that enters it (without being aborted too) stalls
 * and, after timeout_s, aborts the MPI job (docs/dataplane.md). */
void comm_abort(struct comm *c);
void comm_close(struct comm *c);
/* Chaos testing (moectl chaos "cut"): shuts down this rank's tcp connections to `peer` (-1:
 * to every peer), from any thread, as a broken network would. Operations with that peer then
 * fail on both ends, as with a dead peer. Ranks reached through MPI are not affected.
 * Returns how many connections it shut down. */
int comm_cut(struct comm *c, int peer);
int comm_rank(const struct comm *c);
int comm_size(const struct comm *c);

struct comm_group {
    int n;                       // members
    int me;                      // this rank's index in ranks[]
    int ranks[COMM_MAX_RANKS];   // in logical order
};
/* The ranks of pod p (slot order), slot s of every pod (pod order), and every rank (rank
 * order: pod-major, the order whose tree is the tree over pods of the trees over slots).
 * me = -1 when this rank is not a member (another pod's group). */
void comm_group_pod(struct comm_group *g, const struct comm *c, int pod);
void comm_group_slot(struct comm_group *g, const struct comm *c, int slot);
void comm_group_all(struct comm_group *g, const struct comm *c);

/* Member i sends send_bytes[j] bytes to member j (laid out one after another in member order
 * in `send`) and receives recv_bytes[j] bytes from member j (likewise in `recv`). Both sides
 * must agree on every size: a mismatch is MOE_EINVAL on both. Self-transfer is a copy. */
moe_status comm_alltoallv(struct comm *c, int channel, const struct comm_group *g,
                          const void *send, const size_t *send_bytes, void *recv,
                          const size_t *recv_bytes);

/* The part of an n-element buffer that member i of a g-member group owns after a
 * reduce-scatter: [*lo, *hi), the same rule everywhere (contiguous, in member order, sizes
 * differing by at most one). */
void comm_chunk(size_t n, int members, int i, size_t *lo, size_t *hi);

/* buf (n floats, the same n on every member): afterwards member i's chunk (comm_chunk) holds
 * tree_sum over the members' buffers in member order; the rest of buf is unspecified. */
moe_status comm_reduce_scatter(struct comm *c, int channel, const struct comm_group *g,
                               float *buf, size_t n);
/* buf: member i's chunk is valid on member i; afterwards all of buf is, on every member. */
moe_status comm_allgather_chunks(struct comm *c, int channel, const struct comm_group *g,
                                 float *buf, size_t n);
/* reduce_scatter then allgather_chunks: every member ends with the same tree_sum. A group of
 * two does it in one exchange of whole buffers (the same bytes and bits, one round trip). */
moe_status comm_allreduce(struct comm *c, int channel, const struct comm_group *g, float *buf,
                          size_t n);
/* The same for doubles and 64-bit integers (statistics, losses, expert loads). */
moe_status comm_allreduce_f64(struct comm *c, int channel, const struct comm_group *g,
                              double *buf, size_t n);
moe_status comm_allreduce_i64(struct comm *c, int channel, const struct comm_group *g,
                              int64_t *buf, size_t n);
/* Every member contributes `bytes` bytes; recv (n * bytes) gets them in member order. */
moe_status comm_allgather(struct comm *c, int channel, const struct comm_group *g,
                          const void *send, size_t bytes, void *recv);
moe_status comm_barrier(struct comm *c, int channel, const struct comm_group *g);

/* Point to point, for state transfer: both sides name each other and the same byte count.
 * comm_send is synchronous: it returns once the receiver has every byte (it acknowledges),
 * so two ranks sending to each other must order their calls (one sends first). */
moe_status comm_send(struct comm *c, int channel, int to_rank, const void *buf, size_t bytes);
moe_status comm_recv(struct comm *c, int channel, int from_rank, void *buf, size_t bytes);

/* Between operations, from the thread that computes: MOE_OK, or MOE_EUNAVAILABLE naming a
 * tcp peer whose connection closed (a dead process: the comm breaks, as an operation with
 * it would), or the error of a comm already broken or aborted. A collective sees a dead
 * peer at once, but a rank that computes for a long time between two of them would see it
 * only at the next one: asking here between pieces of the compute finds it within one
 * piece. Nonblocking and cheap: it looks at most once per COMM_PEER_CHECK_MS (one poll()
 * without waiting) and reads no byte. */
#define COMM_PEER_CHECK_MS 2
moe_status comm_check_peers(struct comm *c);

/* Bytes this rank sent to other ranks since comm_open, by kind of operation. */
struct comm_stats {
    uint64_t alltoall_bytes;  // comm_alltoallv
    uint64_t reduce_bytes;    // reduce-scatter, allgather_chunks, allreduce*
    uint64_t other_bytes;     // allgather, barrier, send
};
void comm_get_stats(const struct comm *c, struct comm_stats *s);
/* How many peers this rank reaches through shared memory (same host, tcp backend). */
int comm_shm_peers(const struct comm *c);
/* How many peers this rank reaches through encrypted tcp links. */
int comm_encrypted_peers(const struct comm *c);
/* How this rank reaches `rank`: "shm" (shared memory, same host), "tcp" (a socket, encrypted
 * or not) or "mpi" (a pod peer of the mpi backend); NULL for itself or a rank outside the
 * comm. Read from the first channel's link (the others are made the same way). */
const char *comm_peer_transport(const struct comm *c, int rank);
/* Operations (all channels) that have posted their transfers with their peers and not yet
 * returned. A comm_abort that finds one settles what it posted (see comm_abort); one begun
 * after comm_abort posts nothing and fails at once. For diagnostics and tests. */
int comm_ops_in_flight(const struct comm *c);

/* The data plane's environment knobs (MOE_COMM_*), read once per process: by the first
 * comm_open or comm_tunables. A forked child keeps what its parent read, so a program that
 * sets them per child process must not open a comm (or call comm_tunables) before forking.
 * comm_knobs is their table (knobs_print(..., 1) lists them under a daemon's --help). */
struct comm_tunables {
    int shm;         // MOE_COMM_SHM: 0 never shares memory between peers of one host
    int shm_ring_mb; // MOE_COMM_SHM_RING_MB: each shared-memory ring's size
    int cma;         // MOE_COMM_CMA: 0 never reads a local peer's buffer directly
    long cma_min;    // MOE_COMM_CMA_MIN: the smallest payload that goes by descriptor
    double spin_us;  // MOE_COMM_SPIN_US: how long a waiting side yields before it sleeps
    int encrypt;     // MOE_COMM_ENCRYPT: 1 encrypts every tcp link this process opens
};
extern const struct knob comm_knobs[];
extern const int comm_n_knobs;
/* This process's values; NULL when one does not parse or is out of bounds (moe_errmsg names
 * it, and comm_open fails with MOE_EINVAL saying the same). */
const struct comm_tunables *comm_tunables(void);

/* The mpi backend: MPI_Init_thread(MPI_THREAD_MULTIPLE) once per process, before any
 * comm_open with COMM_MPI; *rank and *size of MPI_COMM_WORLD (the pod's slot and slots).
 * MOE_EINVAL where moed was built without MPI. */
moe_status comm_mpi_init(int *rank, int *size);
void comm_mpi_finalize(void);

#endif
