/*
 * teacher.h — the model files a job's spec names besides its data: the teacher it distills
 * from (distill.teacher) and the model it starts from (run.init_from).
 *
 * Owns: reading those files as the job's data is read (beneath the worker's data roots when
 * it has them, any path for `moectl train`), the teacher model (whole, forward only, never
 * changed: every slot of a mesh loads all of it and computes the teacher's logits of its own
 * sequences, so a recovery's new holder just reads it again), checking that a teacher fits its
 * student (vocabulary, sequence length), and starting a model from a saved one.
 * Never: trains the teacher, writes files, or computes a loss (kernels/model.c does, from the
 * logits it is handed).
 */
#ifndef MOE_TEACHER_H
#define MOE_TEACHER_H

#include "../../common/spec.h"
#include "../../common/status.h"
#include "../../kernels/model.h"

struct data_roots;

struct teacher {
    int on;             // the spec names a teacher
    struct model model; // whole, for micro-batches of B_max sequences; forward only
};

/* Loads spec->distill.teacher (if any) for micro-batches of B_max sequences. A missing or
 * unreadable file, one outside the roots, not a moed model, or a teacher whose vocabulary
 * differs from model.vocab or whose seq_len is shorter than the student's fails with one line
 * naming distill.teacher and what is wrong. */
moe_status teacher_open(struct teacher *tc, const struct job_spec *spec, int B_max,
                        const struct data_roots *roots);
void teacher_close(struct teacher *tc);

/* Runs the teacher on tokens (B, T) and points the student's distillation at its logits
 * (with the spec's alpha and temperature); a job without a teacher leaves it off. */
void teacher_forward(struct teacher *tc, struct model *student, const struct distill_spec *d,
                     const int *tokens, int B, int T);
/* Evaluation and anything after the training passes: plain cross-entropy again. */
void teacher_detach(struct model *student);

/* run.init_from, if the spec names one: m's parameters and expert biases from that file
 * (m may hold some experts only); its moments stay zero and its step 0. */
moe_status model_init_from(struct model *m, const struct job_spec *spec,
                           const struct data_roots *roots);

/* That the spec's model files open beneath the roots (a worker's RunSlot check: fail now,
 * naming the field, rather than in the training thread). Reads nothing. */
moe_status model_files_check(const struct data_roots *roots, const struct job_spec *spec);

#endif
