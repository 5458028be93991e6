/*
 * recovery_state.h — a job's recovery in progress, as data (docs/recovery.md).
 *
 * Owns: the record of one recovery from its first fault signal to its last ReportRestored: the
 * phase, what each fenced slot's worker answered (the state copies it holds), the round of
 * calls in flight, the exclusions (spares that refused a RunSlot, sources whose state was
 * refused), and the timings the "recovered" event reports; and the
 * latest state hash each slot reported (the replica check). struct job points to both; they
 * are not persisted (a restarted coordinator fences again: job->recovering is).
 * Never: decides anything. policy/recovery.c drives a recovery through these fields,
 * policy/recovery_plan.c reads the answers into a plan, policy/replicas.c compares the hashes;
 * this header only lets the state layer hold and free them (jobs.c job_drop_recovery).
 */
#ifndef MOE_COORD_RECOVERY_STATE_H
#define MOE_COORD_RECOVERY_STATE_H

#include <stdint.h>

#define REC_MAX_EXCLUDED 16 // workers a recovery will not choose again as spares
#define REC_MAX_REFUSED 16  // sources whose state a recovery refused (kept: the newest)

enum rec_phase { REC_FENCING, REC_WAITING, REC_REBINDING, REC_RESTORING };
enum answer { ANS_PENDING, ANS_HOLDS, ANS_EMPTY, ANS_LOST };

/* One copy a worker can send: the whole state of slot index `slot` after `step`. */
struct state_copy {
    int slot;
    int64_t step;
    int has_sha;                 // a repair's fence: sha is the copy's SHA-256
    uint8_t sha[32];
};

/* What the worker of one slot of the fenced epoch said. */
struct fence_answer {
    char worker_id[24];
    enum answer state;
    int64_t step;                // its live step (ANS_HOLDS)
    struct state_copy *copies;
    int n_copies;
    char why[200];               // ANS_LOST / ANS_EMPTY: what was seen
    int cut_off;                 // ANS_LOST: its fence timed out or found no route, so it may
                                 // be alive but cut off from us (a refusal says it is gone)
};

/* A state a restore refused: it failed its checksum (docs/recovery.md, "Checked transfers").
 * That worker is no source of that slot index for the rest of the recovery. */
struct refused_source {
    char worker_id[24]; // the sender
    int slot;           // the slot index whose state it sent
    char why[240];      // the receiver's words: which block, which checksums
};

/* A partition (docs/recovery.md, "Partitions"): a rebind's data plane failed while every
 * slot's worker still answers its fence holding its state. policy/partition.c keeps it. */
#define PART_MAX_PAIRS 16
struct partition {
    int suspect;                 // a rebind's data-plane fault: the next fence tells
    int suspect_slot;            //   the slot that reported it
    char suspect_what[500];      //   and what it said
    int64_t since_ms;            // held since (0: not held)
    int64_t retry_ms;            // held: the next rebind is not sent before this
    int tries;                   // rebinds that failed while held
    int n_pairs;
    struct { int from, to; } pairs[PART_MAX_PAIRS]; // rank `from` reported it lost rank `to`
    char text[600];              // JobInfo.held
};

struct recovery {
    enum rec_phase phase;
    int rounds;                  // fence rounds after the first (restarts)
    uint64_t gen;                // the round of calls in flight; older answers are dropped
    int sending;                 // fence calls are being sent: answers wait for the loop's end
    int pending;                 // fence answers still to come
    struct fence_answer *ans;    // (pods * slots) the fenced epoch's slots
    int64_t signal_ms;           // the first fault signal
    int64_t since_ms;            // what detection and the total are timed from: a silent
                                 // lost worker's last sign of life, else that signal
                                 // (recovery.c since_fault)
    char since[96];              // which sign that was ("w-3's last heartbeat")
    int64_t first_fault_ms;      // the earliest ReportFault (0: none)
    int64_t first_fence_ms;      // the first fence round started
    int64_t fence_ms, fenced_ms; // the last fence round: started, every answer in
    int64_t planned_ms;          // the plan was stored
    int64_t accepted_ms;         // every RunSlot(restore) was accepted
    int64_t wait_since_ms;       // no spare since then (0: not waiting)
    int move;                    // a move: the doubled slot that goes to a spare (-1: none)
    int asked_move;              // this began as a move (recovery_rebalance)
    int faulted;                 // the move met a fault (a slot lost, a restart): a recovery too
    int waiting_announced;
    int repair;                  // the replicas differ: only hash-verified copies count
    char first_signal[300];
    char exclude[REC_MAX_EXCLUDED][24];
    int n_exclude;
    struct refused_source refused[REC_MAX_REFUSED];
    int n_refused;
    struct partition part;
    /* restoring */
    char *restored;              // (pods * slots) ReportRestored seen
    int n_restored;
    double max_transfer_s, max_connect_s;
    uint64_t bytes;
};

/* The latest state hash one slot reported. */
struct replica_hash {
    int have;
    int64_t step;
    uint8_t sha[32];
};

/* The newest steps at which two pods reported the same hash of one slot index: a copy of such
 * a step with that hash is good even after later reports have replaced the per-slot hashes.
 * A repair judges a recovery's restored state by it (a restore keeps only S(T), so a bit that
 * flips in it before the next step's check has no older copy to fall back to; T's own agreed
 * hash tells the good copy from the bad one). */
#define REPLICA_AGREED_KEEP 4 // per slot index

/* A repair waits for the replay to hash the step whose replicas differed: the copy that
 * disagrees with the replay's agreed hash was the wrong one (policy/repair.c). */
struct repair_watch {
    int slot;                    // the slot index whose replicas differed
    int64_t step;                //   at this step
    int64_t back_to;             // T: the step every slot returned to
    int64_t held_lo, held_hi;    // the steps of the copies of `slot` the fence found (-1: none)
    int pods;
    char (*worker_id)[24];       // (pods) the worker that held slot index `slot` of each pod
    char *have;                  // (pods) its hash of (slot, step) is known
    uint8_t (*sha)[32];          // (pods) that hash
    char *replayed;              // (pods) the replay's hash of (slot, step) reported
    uint8_t (*replay_sha)[32];   // (pods) that hash
};
void repair_watch_free(struct repair_watch *w);

/* Frees the fence answers of a recovery of an n-slot mesh (for the next round). */
void recovery_answers_free(struct recovery *r, int n);

#endif
