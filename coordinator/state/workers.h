/*
 * workers.h — the worker table: every worker process that ever registered, its addresses, its
 * pod, its health, the job slot it plays, and its durable record.
 *
 * Owns: struct worker; finding, adding and loading workers; a worker's record in the store
 * (WorkerInfo) and its view for GetCluster; its identity (a credential made when its id is
 * handed out, kept in the store's WorkerRecord, never in GetCluster's view): who a credential
 * belongs to, and the credential the coordinator's calls to the worker carry; the channel to
 * its Worker service; and the plain changes of a worker's state (dead, free again) that several
 * policies make.
 * States: IDLE (alive, may be given a slot once its address is probed reachable), BUSY (bound
 * to a job, or finishing one), DEAD (silent past the heartbeat timeout, or did not answer a
 * fence), LEFT.
 * Never: decides whether a worker is dead or which slot it plays (policy/membership.c,
 * policy/schedule.c and policy/recovery.c do), or calls it (worker_calls.c does).
 */
#ifndef MOE_COORD_WORKERS_H
#define MOE_COORD_WORKERS_H

#include "state.h"

/* Out of memory in a table's index is an error the caller handles (the table stays
 * consistent), never an exit: the daemons do not exit on a bad moment. */
#define HASH_NONFATAL_OOM 1
#include <uthash.h>

#define WORKER_CREDENTIAL_MAX 128 // "w-N.<64 hex>"

struct worker {
    long num;                  // N of "w-N"
    char id[24];
    char credential[WORKER_CREDENTIAL_MAX]; // its secret ("": none on record, it cannot be
                               // called or speak for itself; it registers as a new worker)
    char address[160];
    int pod;
    Moed__V1__WorkerState state;
    char version[32], host[128];
    int pid, cpus;
    char data_address[DATA_ADDR_MAX]; // its data-plane listener
    char extra_data_address[DATA_ADDR_MAX]; // its listener for a second slot of one job ("":
                               // it cannot play two; see policy/placement.c double_up)
    int mpi_rank, mpi_size;    // under mpirun (mpi_size 0: not)
    char mpi_job[256];         // which mpirun job: equal for the ranks of one pod only
    int64_t registered_ms, last_heartbeat_ms;
    int idle_heartbeats;       // it registered saying it heartbeats seldom while idle
    int beats_idle;            // ... and its last heartbeat named no job: it may be slow
    long idle_told_ms;         // the idle interval its last answer told it (0: none yet)
    long idle_allowance_ms;    // the longest of the last two told: what it may still be using
    char job_id[24];           // the job whose slot it plays (or is finishing); "" when free
    int slot;
    uint64_t epoch;            // the epoch of job_id it was bound in (0: unknown, after a
                               // coordinator restart until it re-registers)
    struct rpc_channel *channel; // to its Worker service
    int confirmed;             // registered with this coordinator process (not only loaded)
    int awaiting_idle;         // refused a job as busy: not schedulable until a heartbeat
                               // shows it idle
    int64_t last_report_ms;    // its last StepReport (last_heartbeat_ms counts it too): which
                               // sign of life a recovery's detection starts from (recovery.c)
    int wrong_copies;          // repairs that found its copy of a state wrong (policy/repair.c)
    int drained;               // wrong twice: given no new slot (policy/repair.c)
    /* whether the coordinator can use it (policy/reachability.c); not loaded from the store:
     * every registration probes again */
    int reachable;             // the probe of `address` answered since it registered
    char refused[768];         // why it gets no slot ("": none), as GetCluster shows it
    int refused_for_good;      // its address is loopback: only a new registration mends that
    int probing;               // a probe (or its diagnosis) in flight
    unsigned probe_gen;        // numbers the probes: the answer to an older one is dropped
    int probe_failures;        // failed probes in a row: the backoff before the next
    int64_t next_probe_ms;     // a heartbeat after this starts the next probe
    UT_hash_handle hh;         // in co->workers_by_id, keyed by id (which never changes)
    UT_hash_handle hh_address; // in co->workers_by_address while it holds its address there
    int address_indexed;       //   (keyed by `address`: taken out before that changes)
};

/* The worker with this id, or NULL: O(1) (a hash table, co->workers_by_id), so that the
 * lookup every call from a worker makes (its credential, then its request) does not grow with
 * the cluster. */
struct worker *workers_find(struct coordinator *co, const char *id);
/* The address index: which worker registered last at an address, so that a registration finds
 * the live worker it supersedes in O(1), not by a scan of the table (after a coordinator
 * restart every worker registers again: a scan each made that O(workers^2)). w takes its
 * address in the index (from whoever had it: returned, NULL when none); workers_unindex
 * takes it out, before its address changes. */
struct worker *workers_index_address(struct coordinator *co, struct worker *w);
void workers_unindex_address(struct coordinator *co, struct worker *w);

/* A new worker record with the next id ("w-N") and a new credential, the credential and the
 * id counter already stored (synced); the caller fills and saves the rest. */
moe_status workers_add_new(struct coordinator *co, struct worker **out);
/* rpc_identify_fn for the coordinator's server (ctx: the coordinator): the id of the worker
 * whose credential `cred` is, compared in constant time. */
int workers_identify(void *ctx, const char *cred, size_t len, char out[RPC_IDENTITY_MAX]);
/* Reads every worker from the store; those that were alive get a full heartbeat timeout from
 * now to show they still are, and a channel (coordinator_start). */
moe_status workers_load(struct coordinator *co);
void workers_free(struct coordinator *co);

/* (Re)opens the channel to a worker's Worker service at w->address; its calls carry the
 * worker's own credential (the worker accepts no other). */
moe_status worker_connect(struct coordinator *co, struct worker *w);

/* IDLE or BUSY. */
int worker_alive(const struct worker *w);
/* It can be given a slot now: idle, free, probed reachable and not refused, not waiting to
 * show it is idle. */
int worker_schedulable(const struct worker *w);

/* It plays no slot any more: BUSY becomes IDLE; with awaiting_idle it is not schedulable
 * until a heartbeat shows it idle (its training thread may still be running). Not saved. */
void worker_set_free(struct worker *w, int awaiting_idle);
/* DEAD and unbound, saved. */
void worker_mark_dead(struct coordinator *co, struct worker *w);

/* Adds a worker's record to a store batch; saves one on its own (synced). */
void worker_batch(struct store_batch *b, const struct worker *w);
moe_status worker_save(struct coordinator *co, const struct worker *w);
/* Written before it returns but not synced: it survives the coordinator's death (SIGKILL), not
 * the machine's. For what a worker tells again anyway (its re-registration). */
moe_status worker_save_unsynced(struct coordinator *co, const struct worker *w);

/* The WorkerInfo view of w (pointing into it); `extra` holds the one extra data address the
 * message points to. */
void worker_info(Moed__V1__WorkerInfo *wi, const struct worker *w, char *extra[1]);

/* A page of the ClusterStatus view (pointing into the tables; valid until they change): the
 * workers after worker number `after` (0: from the first), at most max_workers (0: none, the
 * summary only) and about max_bytes packed, one at least; next_token (st.next_page_token)
 * the last one's number when more follow, else "". On every page: the pods (distinct pod
 * numbers of the workers that did not leave, ascending; healthy when all of a pod's workers
 * are alive), the workers by state, the job counts. MOE_ENOMEM when it cannot be built. */
struct cluster_view {
    Moed__V1__ClusterStatus st;
    Moed__V1__WorkerInfo *infos, **info_ptrs;
    char **extra;          // one extra data address per worker of the page
    Moed__V1__PodInfo *pods, **pod_ptrs;
    char next_token[24];
};
moe_status cluster_view_fill(struct cluster_view *v, const struct coordinator *co, int64_t now,
                             long after, int max_workers, size_t max_bytes);
void cluster_view_free(struct cluster_view *v);

#endif
