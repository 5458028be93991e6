/*
 * placement.h — which idle workers play a job's slots (the rule is in placement.c's header).
 */
#ifndef MOE_COORD_PLACEMENT_H
#define MOE_COORD_PLACEMENT_H

#include "../state/jobs.h"
#include "../state/workers.h"

/* MOE_EINVAL naming the reason when the mesh can never be placed on the workers registered
 * and alive now (more slots than workers; mpi: too few MPI jobs of `slots` ranks). */
moe_status placement_check(const struct coordinator *co, int pods, int slots, const char *backend);
/* Fills out[p * slots + s] with the worker for each slot and returns 1, or returns 0 when the
 * idle workers cannot hold the whole mesh now (nothing is changed). */
int placement_choose(const struct coordinator *co, const struct job *j, struct worker **out);
/* Recovery: new workers for the slots of j with need[k] set, none of them in `exclude`
 * (worker ids, n_exclude): tcp any schedulable worker, preferring the physical pod of the
 * logical pod's other workers (`keep[k]`: the worker staying in slot k, or NULL), or a worker
 * that stays and can play a second slot; mpi a whole idle MPI job of S ranks for each logical
 * pod with a needy slot (every slot of such a pod must be needy). Fills out[k] for the needy
 * slots and returns 1, or returns the first needy slot it cannot place, as -1 - k. */
int placement_replace(const struct coordinator *co, const struct job *j, const char *need,
                      struct worker *const *keep, char (*exclude)[24], int n_exclude,
                      struct worker **out);

#endif
