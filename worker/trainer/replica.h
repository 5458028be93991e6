/*
 * replica.h — a slot's redundancy and its recovery (docs/recovery.md).
 *
 * Owns, for one slot of a distributed job:
 *   - the previous version of its state: the update writes the next state into a second
 *     arena and swaps (model_update_into), so the slot holds S(t) and S(t - 1) at no copying
 *     cost, and can return one step;
 *   - buddy copies: with mesh.replicas > pods, the slot sends its experts and their moments to
 *     the next mesh_buddies() slots of its pod during every step (channel 2, on this file's
 *     thread, overlapped with the forward and backward), and keeps two versions of the copies
 *     the slots before it send;
 *   - the fence: after it no update starts, and the copies the slot can send (its own live and
 *     previous versions, its buddy copies) are frozen and listed for the coordinator;
 *   - restoring a new epoch: every slot returns to the plan's step, pulling its state from a
 *     source rank when it does not hold it, and the buddy copies are refreshed;
 *   - the checksums of every state transfer, restores and buddy copies alike
 *     (transfer_check.h): a copy that does not match what its sender hashed is never used
 *     (a held buddy copy is checked when a fence is about to list it, not on arrival);
 *   - the state hash that data-parallel replicas compare (SHA-256, every mesh.check_every steps,
 *     off the training thread).
 * Never: decides the plan (the coordinator does), or writes anything to disk.
 * Threads: the training thread calls everything but replica_fence, replica_request_flip,
 * replica_request_corrupt and replica_damage_copies, which any thread may call (the worker
 * daemon's loop).
 */
#ifndef MOE_REPLICA_H
#define MOE_REPLICA_H

#include "trainer.h"

#include <stdint.h>

#define REPLICA_MAX_COPIES 64

/* One copy a slot can send: the whole state of slot index `slot` after `step`. */
struct state_copy {
    int slot;
    long step;
    int has_sha;     // sha holds the copy's SHA-256 (a repair's fence asked; own copies only)
    uint8_t sha[32];
};

struct replica;

/* Slot mode: allocates the previous-version arena and the buddy copies (t->mesh.rep). */
moe_status replica_open(struct trainer *t);
void replica_close(struct trainer *t);

/* The step begins (live = S(step)): the thread sends the buddy copies of it and, on a check
 * step, hashes it. */
void replica_step_begin(struct trainer *t);
/* Before the step's all-rank collective: waits for the thread. MOE_OK, or its error (the copy
 * could not be sent or received: the epoch is over). */
moe_status replica_step_join(struct trainer *t);
/* After an error: waits for the thread without caring how it did (the comm is aborted). */
void replica_step_abandon(struct trainer *t);
/* The optimizer step, keeping the previous version: MOE_EINTERNAL naming the fence if the
 * coordinator fenced the slot (no update may start after it). */
moe_status replica_update(struct trainer *t, double norm);
/* Whether the step that starts at `step` hashes its state for the replica check (every
 * mesh.check_every steps; with diloco every mesh.check_every outer steps). */
int replica_checks(const struct trainer *t, long step);
/* The hash the thread computed during this step, if it was a check step: 1 and out/step. */
int replica_hash(const struct trainer *t, uint8_t out[32], long *step);

/* Any thread: freeze the state (no update starts after this) and list the copies held:
 * returns how many (at most max), *live the live step. hash: also the SHA-256 of each own
 * copy (a repair's fence; it reads the whole state twice). */
int replica_fence(struct trainer *t, struct state_copy *out, int max, long *live, int hash);
/* Any thread, after the fence (no update changes them then): the arenas (parameters, both
 * moments, buffers) of this slot's own state after `step`, its live or previous version, and
 * with diloco *carry its outer version's carry (outer.h; else NULL): 1, or 0 when it holds no
 * such version. What an export writes (slot_state.h). */
int replica_own_state(struct trainer *t, long step, const real *arena[4], const real **carry);
/* Any thread: the training thread flips one bit of its live parameters before its next step
 * (moectl chaos "flip": silent corruption the replica check must catch). */
void replica_request_flip(struct trainer *t);
void replica_apply_flip(struct trainer *t); // the training thread, between steps
/* Any thread: the next state this slot sends for a restore carries one flipped bit, after its
 * checksums were made (moectl's InjectFault "corrupt-transfer": the receiver must refuse it). */
void replica_request_corrupt(struct trainer *t);
/* Any thread: one bit flipped in every buddy copy this slot holds, as damage to its memory
 * after the copies arrived would (tests: the fence must leave them out). */
void replica_damage_copies(struct trainer *t);

/* A recovery epoch: every slot of the new comm (already in t->mesh.comm) calls it with the
 * same plan. from[k] (rank order) is the rank that sends rank k its state at `step`, or -1
 * when rank k holds it (its live or previous version, or step 0, which it makes). */
struct restore_plan {
    long step;
    const int *from;
    int n;
};
struct restore_stats {
    double transfer_s;
    uint64_t bytes_sent, bytes_received;
    int refused_from; // the rank whose state failed its checksum (the error says where), or -1
};
moe_status replica_restore(struct trainer *t, const struct restore_plan *p,
                           struct restore_stats *st);

#endif
