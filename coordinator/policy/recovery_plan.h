/*
 * recovery_plan.h — what a recovery does, decided from the fence's answers (docs/recovery.md,
 * "The plan"): which slots keep their worker, the step T every slot returns to, where each slot
 * that does not hold its state at T pulls it from, and the words for the events.
 * Inputs are the job (its mesh, committed_step, binding) and its recovery's fence answers
 * (j->rec->ans: the state copies each worker holds); every array is indexed by slot,
 * k = p * slots + s, and has pods * slots entries.
 * Never: sends, stores or chooses workers (recovery.c drives, placement.c chooses spares).
 */
#ifndef MOE_COORD_RECOVERY_PLAN_H
#define MOE_COORD_RECOVERY_PLAN_H

#include "../state/jobs.h"
#include "../state/workers.h"

/* keep[k] = 1 for the slots whose worker stays: those that answered holding state; with mpi a
 * pod that lost a slot moves whole (its MPI job is one failure domain). */
void plan_keep(const struct job *j, const struct recovery *r, char *keep);

/* A fence's answer that holds state: its step and the copies it lists (slot index, step, hash),
 * those naming a slot index outside the mesh of `slots` dropped. Used by a recovery's fence and
 * by an export's (policy/export.c). a->copies is malloc'd (NULL when none or out of memory). */
void plan_answer_copies(struct fence_answer *a, const Moed__V1__FenceResponse *resp, int slots);

/* A move takes the doubled slot r->move off its worker, which keeps its other slot: keep and
 * kept lose the moved slot, and of the copies that worker listed only those of the kept slot
 * stay (its own slot index and, with buddies, the indexes it holds copies of); the others came
 * from the moved slot (its own state, which double_up made sure the kept slot held no copy of,
 * and its buddy copies) and leave with it, so no plan may count or source from them. A move
 * whose slot was lost anyway, or whose worker lost the other slot, becomes a plain recovery
 * (r->move = -1). */
void plan_move(const struct job *j, struct recovery *r, char *keep, struct worker **kept);

/* T: the largest step >= committed_step (a repair: >= committed_step - 1) at which every slot
 * index has a copy on a worker that stays; 0 when nothing is committed yet (any worker can make the step-0 state); -1 when
 * there is none. */
int64_t plan_step(const struct job *j, const struct recovery *r, const char *keep);

/* The rank of the new epoch that sends slot k its state at t (the same slot index in another
 * pod first: its own state; else a buddy's copy), or -1: its own worker has it; -2: none (every
 * worker holding a copy at t sent a state this recovery refused, r->refused). */
int plan_source(const struct job *j, const struct recovery *r, const char *keep, int k,
                int64_t t);

/* plan_step found nothing: why, naming the slot whose every copy is gone and its workers
 * ("w-2 and w-4 lost", "w-2 lost and w-4 without state"). */
void plan_unrecoverable(const struct job *j, const struct recovery *r, const char *keep,
                        char *why, size_t cap);

/* Whether a restore of this recovery refused the state `worker` sent for slot index s. */
int plan_refused(const struct recovery *r, const char *worker, int s);

/* A slot with no source left (plan_source -2): why, naming the slot, the step and every source
 * refused, with the receiver's words ("...: refused from w-1: ...; from w-2: ..."). */
void plan_no_source(const struct job *j, const struct recovery *r, int k, int64_t t, char *why,
                    size_t cap);

/* Appends "; sources refused: w-1 for slot index 0 (...)" when a restore refused some. */
void plan_refused_text(const struct recovery *r, char *out, size_t cap);

/* Appends to `out` (after its text) "; slot (1, 0): w-4 lost -> w-6, state from rank 0 (w-1)"
 * for each slot that moves or pulls its state; j->bindings and j->restore_from are the new
 * epoch's. */
void plan_text(const struct job *j, const struct recovery *r, const char *keep, char *out,
               size_t cap);

#endif
