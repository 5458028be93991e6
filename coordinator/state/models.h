/*
 * models.h — the trained models the coordinator keeps: DIR/models/<job>.safetensors.
 *
 * Owns: the upload of a job's model (chunks appended in order to a .part file from offset 0,
 * an upload restarted at offset 0 starts over, every chunk and the commit from the worker that
 * started it: another worker's chunk cannot interleave), its check against the size and
 * SHA-256 its worker reports (synced, then renamed into place: a model is there whole or not
 * at all), opening it for FetchModel, and removing it with its job.
 * Never: decides that a job succeeded (policy/reports.c does, once the model checks out), or
 * holds a model in memory.
 */
#ifndef MOE_COORD_MODELS_H
#define MOE_COORD_MODELS_H

#include "jobs.h"

/* The slot (p * slots + s) whose worker writes and uploads a job's model: slot (0, 0), as
 * worker/trainer's trainer_writes_model says. */
#define MODEL_WRITER_SLOT 0

/* One chunk of j's upload from worker `uploader` (offset 0 starts the upload as its).
 * MOE_EINVAL: out of order ("chunk at 5, expected 0: restart at 0"), or from another worker
 * than the one that started it; MOE_EIO: the coordinator cannot write it (logged). */
moe_status model_upload_chunk(struct coordinator *co, struct job *j, const char *uploader,
                              int64_t offset, const uint8_t *data, size_t len);
/* The upload of `uploader` is whole: checks it has `bytes` bytes with SHA-256 `sha` (sha_len
 * 32) and moves it into place; j->model_bytes is set. MOE_EFORMAT: it does not match, or
 * another worker uploaded it (the worker may upload again); MOE_EIO: it cannot be stored. */
moe_status model_upload_commit(struct coordinator *co, struct job *j, const char *uploader,
                               int64_t bytes, const uint8_t *sha, size_t sha_len);
/* Drops an upload in progress (the job ended). */
void model_upload_abort(struct job *j);
/* Opens j's model for reading: *fd and its size. MOE_EIO when it is missing (logged). */
moe_status model_open(struct coordinator *co, const struct job *j, int *fd, int64_t *size);
/* Removes j's model and any upload in progress (the job is being deleted); a file that
 * cannot be removed is logged, and models_sweep tries again at the next start. */
void model_remove(struct coordinator *co, struct job *j);
/* Removes the files of jobs the table does not hold: a deletion is stored before its files
 * go, so a coordinator that died in between leaves them (coordinator_start, after loading). */
void models_sweep(struct coordinator *co);

#endif
