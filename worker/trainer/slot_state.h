/*
 * slot_state.h — a slot's whole state in one file: the export of a job that cannot go on, and
 * the start of the job that resumes it (docs/recovery.md, "Export and resume").
 *
 * Owns: the file's layout (safetensors: "state.params", "state.adam_m", "state.adam_v",
 * "state.buffers" of the slot's model, which holds the dense parameters and its experts; with
 * mesh.sync diloco "state.outer_momentum", and with mesh.outer_overlap "state.outer_mean" (the
 * pods' mean the next outer step applies: the outer version's carry, outer.h); the
 * metadata says format "moed-slot-state", the job, the step, the slot index, the mesh, the
 * model config and the CRC-32C of each tensor), writing it durably beneath an open directory
 * (common/fileio.h's atomic file: a temporary, fsync, rename, fsync of the directory) and reading it back with every checksum, shape and number
 * checked before any byte reaches the model.
 * Never: decides which step or slot is exported (the coordinator does) or writes anything
 * else; the export reads the state frozen by the fence (replica_own_state) and changes nothing.
 */
#ifndef MOE_SLOT_STATE_H
#define MOE_SLOT_STATE_H

#include "trainer.h"

#include <stdint.h>

#define SLOT_STATE_FORMAT "moed-slot-state"

/* What an export wrote. */
struct slot_state_file {
    char path[SPEC_PATH_MAX + 160];
    int64_t bytes;
    uint32_t crc32c; // of the whole file, as read back from disk
};

/* Writes the state of slot index t->mesh.slot after `step` (its own live or previous version,
 * held since the fence) to <job_id>/slot-<s>-step-<step>.safetensors beneath the open
 * directory dirfd (named `dir` in out->path and errors), making <job_id> (0700) and following
 * no symlink out of it. MOE_ENOTFOUND when the slot holds no version of that step; MOE_EINVAL
 * for a symlink in the way; MOE_EIO naming the path when the write fails (nothing is left
 * behind). */
moe_status slot_state_export(struct trainer *t, const char *job_id, long step, int dirfd,
                             const char *dir, struct slot_state_file *out);

/* Loads a file written by slot_state_export into t (a slot, opened with its model allocated,
 * not yet trained): the file's CRC-32C must be `crc32c`, its step `step`, its slot index and
 * mesh t's, its model config t's and each tensor's CRC-32C the one recorded; then the state
 * and the step are t's. MOE_EIO / MOE_EFORMAT / MOE_EINVAL naming the path and what differs. */
moe_status slot_state_load(struct trainer *t, const char *path, long step, uint32_t crc32c);

#endif
