/*
 * export.c — nothing is lost when a job cannot go on (docs/recovery.md, "Export and resume").
 *
 * Owns: the export of a recoverable job that ended FAILED or CANCELLED while its workers held
 * its state (state/export_state.h):
 *   fence    FenceSlot to every worker still bound (fenced ones answer again: idempotent);
 *            each answer lists the copies it holds
 *   choose   the step E at which the most slot indices have an own copy (a slot's live or
 *            previous version: a buddy's copy holds experts only), the newest of those: the
 *            committed step or a recovery's T when the whole job is covered there
 *   write    ExportState(E) for each covered slot index to one worker that holds it (the
 *            lowest pod); each writes one file and answers its path, size and CRC-32C
 *   record   the manifest (JobInfo.exported: per slot index which worker, host, path, bytes,
 *            checksum; the missing ones and why) with the event "exported" when every slot
 *            index has its file, else "export_failed"; then StopJob to every worker
 * and the checks of a job that resumes from a complete export (export_check_resume).
 * Never: touches a file (workers write and read them) or keeps a worker past its export: an
 * export that cannot finish still ends in a manifest and StopJob.
 */
#include "export.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../../proto/methods.h"
#include "../state/events.h"
#include "../state/worker_calls.h"
#include "recovery_plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct export_ctx {
    struct coordinator *co;
    char job_id[24];
    uint64_t gen;
    int k; // fence: the bound slot; write: the slot index
};

static void finish_export(struct coordinator *co, struct job *j);

int export_holds(const struct job *j, const struct worker *w) {
    return j && (j->export_due || j->exp) && job_slot_of(j, w->id) >= 0;
}

/* The export this answer belongs to, or NULL (an older round, or the job is gone). */
static struct job_export *current(struct export_ctx *c, struct job **j) {
    *j = c->co->stopping ? NULL : jobs_find(c->co, c->job_id);
    struct job_export *x = *j ? (*j)->exp : NULL;
    return x && x->gen == c->gen ? x : NULL;
}

static struct export_ctx *ctx_new(struct coordinator *co, const struct job *j, int k) {
    struct export_ctx *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->co = co;
    snprintf(c->job_id, sizeof c->job_id, "%s", j->id);
    c->gen = j->exp->gen;
    c->k = k;
    return c;
}

/* ---- choose ---- */

/* How many slot indices have an own copy at step t among the fence's answers. */
static int coverage(const struct job_export *x, int slots, int64_t t) {
    int n = 0;
    for (int s = 0; s < slots; s++) {
        int have = 0;
        for (int k = s; k < x->n && !have; k += slots)
            for (int c = 0; c < x->ans[k].n_copies && !have; c++)
                have = x->ans[k].copies[c].slot == s && x->ans[k].copies[c].step == t;
        n += have;
    }
    return n;
}

/* E: the step with the widest coverage, the newest of those; -1 when nothing is held. */
static int64_t choose_step(const struct job_export *x, int slots) {
    int64_t best = -1;
    int best_n = 0;
    for (int k = 0; k < x->n; k++)
        for (int c = 0; c < x->ans[k].n_copies; c++) {
            int64_t t = x->ans[k].copies[c].step;
            int n = coverage(x, slots, t);
            if (n > best_n || (n == best_n && t > best)) best = t, best_n = n;
        }
    return best;
}

/* The bound slot (lowest pod first) whose worker holds slot index s's own copy at t, or -1. */
static int holder(const struct job_export *x, int slots, int s, int64_t t) {
    for (int k = s; k < x->n; k += slots)
        for (int c = 0; c < x->ans[k].n_copies; c++)
            if (x->ans[k].copies[c].slot == s && x->ans[k].copies[c].step == t) return k;
    return -1;
}

/* Whether the fence answer a holds slot index s at any step. */
static int holds_any(const struct fence_answer *a, int s) {
    for (int c = 0; a->state == ANS_HOLDS && c < a->n_copies; c++)
        if (a->copies[c].slot == s) return 1;
    return 0;
}

/* Why no worker holds slot index s at t: what each of its workers' fences said. A worker that
 * plays the slot after a recovery that never finished may answer holding only other slots'
 * state: every copy is lost then too. */
static void why_none(const struct job *j, const struct job_export *x, int s, int64_t t,
                     char *out, size_t cap) {
    int held = 0;
    for (int k = s; k < x->n; k += j->slots) held |= holds_any(&x->ans[k], s);
    size_t len = held ? (size_t)snprintf(out, cap, "no copy at step %lld (", (long long)t)
                      : (size_t)snprintf(out, cap, "every copy lost (");
    for (int k = s; k < x->n && len < cap; k += j->slots) {
        const struct fence_answer *a = &x->ans[k];
        len += (size_t)snprintf(out + len, cap - len, "%s%s %s", k == s ? "" : ", ",
                                a->worker_id[0] ? a->worker_id : "(unbound)",
                                holds_any(a, s)           ? "holds other steps"
                                : a->state == ANS_HOLDS ? "holds none of it"
                                : a->why[0]             ? a->why
                                                        : "lost");
    }
    if (len < cap) snprintf(out + len, cap - len, ")");
}

/* ---- write ---- */

static void write_reply(void *arg, const struct rpc_result *res, const ProtobufCMessage *msg) {
    struct export_ctx *c = arg;
    struct job *j;
    struct job_export *x = current(c, &j);
    if (x && x->phase == EXP_WRITING && !x->out[c->k].answered) {
        struct export_slot *o = &x->out[c->k];
        o->answered = 1;
        if (res->code == GRPC_STATUS_OK) {
            const Moed__V1__ExportStateResponse *r = (const void *)msg;
            o->ok = 1;
            snprintf(o->host, sizeof o->host, "%s", r->host);
            snprintf(o->path, sizeof o->path, "%s", r->path);
            o->bytes = r->bytes;
            o->crc32c = r->crc32c;
        } else {
            snprintf(o->why, sizeof o->why, "%s could not write it: %s: %.200s", o->worker_id,
                     rpc_code_name(res->code), res->details);
        }
        x->pending--;
        if (!x->pending && !x->sending) finish_export(c->co, j);
    }
    free(c);
}

static void send_write(struct coordinator *co, struct job *j, int s, int k) {
    struct job_export *x = j->exp;
    struct export_slot *o = &x->out[s];
    snprintf(o->worker_id, sizeof o->worker_id, "%s", x->ans[k].worker_id);
    struct worker *w = workers_find(co, o->worker_id);
    struct export_ctx *c = w && w->channel ? ctx_new(co, j, s) : NULL;
    struct job_spec spec;
    spec_defaults(&spec);
    if (spec_parse(&spec, j->spec_json, strlen(j->spec_json), "stored spec") != MOE_OK)
        spec.run.export_dir[0] = 0;
    Moed__V1__ExportStateRequest req = MOED__V1__EXPORT_STATE_REQUEST__INIT;
    req.job_id = j->id;
    req.epoch = j->epoch;
    req.slot = s;
    req.step = x->step;
    req.dir = spec.run.export_dir;
    x->pending++;
    if (!c || rpc_call_async(co->pump, w->channel, RPC_WORKER_EXPORT_STATE, &req.base,
                             &moed__v1__export_state_response__descriptor, EXPORT_DEADLINE_S,
                             write_reply, c) != MOE_OK) {
        free(c);
        o->answered = 1;
        snprintf(o->why, sizeof o->why, "%s could not be asked to write it", o->worker_id);
        x->pending--;
    }
}

static void start_writes(struct coordinator *co, struct job *j) {
    struct job_export *x = j->exp;
    x->phase = EXP_WRITING;
    x->step = choose_step(x, j->slots);
    x->sending = 1;
    for (int s = 0; s < j->slots && x->step >= 0; s++) {
        int k = holder(x, j->slots, s, x->step);
        if (k >= 0) send_write(co, j, s, k);
    }
    for (int s = 0; s < j->slots; s++)
        if (!x->out[s].worker_id[0]) {
            x->out[s].answered = 1;
            if (x->step >= 0)
                why_none(j, x, s, x->step, x->out[s].why, sizeof x->out[s].why);
            else
                snprintf(x->out[s].why, sizeof x->out[s].why, "no surviving worker holds state");
        }
    x->sending = 0;
    if (!x->pending) finish_export(co, j);
}

/* ---- fence ---- */

static void fence_reply(void *arg, const struct rpc_result *res, const ProtobufCMessage *msg) {
    struct export_ctx *c = arg;
    struct job *j;
    struct job_export *x = current(c, &j);
    if (x && x->phase == EXP_FENCING && x->ans[c->k].state == ANS_PENDING) {
        struct fence_answer *a = &x->ans[c->k];
        const Moed__V1__FenceResponse *r = (const void *)msg;
        if (res->code == GRPC_STATUS_OK && r->holds) {
            a->state = ANS_HOLDS;
            plan_answer_copies(a, r, j->slots);
        } else {
            a->state = res->code == GRPC_STATUS_OK ? ANS_EMPTY : ANS_LOST;
            snprintf(a->why, sizeof a->why, "%s", res->code == GRPC_STATUS_OK
                                                      ? "holds no state of the job"
                                                      : "did not answer its fence");
        }
        x->pending--;
        if (!x->pending && !x->sending) start_writes(c->co, j);
    }
    free(c);
}

static void fence_one(struct coordinator *co, struct job *j, int k) {
    struct job_export *x = j->exp;
    struct fence_answer *a = &x->ans[k];
    snprintf(a->worker_id, sizeof a->worker_id, "%s", j->bindings[k].worker_id);
    struct worker *w = workers_find(co, a->worker_id);
    int up = w && w->channel && (w->state == MOED__V1__WORKER_STATE__WORKER_BUSY ||
                                 w->state == MOED__V1__WORKER_STATE__WORKER_IDLE);
    int alive = up && !strcmp(w->job_id, j->id);
    struct export_ctx *c = alive ? ctx_new(co, j, k) : NULL;
    x->pending++;
    if (c && worker_call_fence(co, j, w, fence_reply, c) == MOE_OK) return;
    free(c);
    a->state = ANS_LOST;
    snprintf(a->why, sizeof a->why, "%s", alive ? "could not be fenced"
                                          : up  ? "ended its slot"
                                                : "lost");
    x->pending--;
}

static void begin(struct coordinator *co, struct job *j) {
    j->export_due = 0;
    struct job_export *x = calloc(1, sizeof *x);
    int n = job_n_slots(j);
    if (x) {
        x->ans = calloc((size_t)n, sizeof *x->ans);
        x->out = calloc((size_t)j->slots, sizeof *x->out);
    }
    if (!x || !x->ans || !x->out) {
        job_export_free(x);
        LOG_ERROR("%s: out of memory starting its export: its workers are told to stop", j->id);
        worker_call_stop_all(co, j);
        return;
    }
    x->n = n;
    x->slots = j->slots;
    x->gen = ++co->recovery_calls;
    x->started_ms = moe_wall_ms();
    j->exp = x;
    Moed__V1__ExportManifest m = MOED__V1__EXPORT_MANIFEST__INIT;
    m.job_id = j->id;
    m.in_progress = 1; // shown (moectl status) until the manifest replaces it
    if (j->exported) moed__v1__export_manifest__free_unpacked(j->exported, NULL);
    j->exported = (Moed__V1__ExportManifest *)pb_clone(&m.base);
    LOG_INFO("%s: %s: exporting the state its workers hold", j->id, job_state_name(j->state));
    x->sending = 1;
    for (int k = 0; k < n; k++) fence_one(co, j, k);
    x->sending = 0;
    if (!x->pending) start_writes(co, j);
}

void export_poll(struct coordinator *co) {
    for (int i = 0; i < co->n_jobs; i++)
        if (co->jobs[i]->export_due && !co->jobs[i]->exp) begin(co, co->jobs[i]);
}

/* ---- record ---- */

/* "0-3" or "0, 1, 3": the slot indices whose file is (ok = 1) or is not (ok = 0) written. */
static void slot_list(const struct job_export *x, int ok, char *out, size_t cap) {
    size_t len = 0;
    out[0] = 0;
    int all = 1;
    for (int s = 0; s < x->slots; s++) all &= x->out[s].ok == ok;
    if (all && x->slots > 1) {
        snprintf(out, cap, "0-%d", x->slots - 1);
        return;
    }
    for (int s = 0; s < x->slots && len < cap; s++)
        if (x->out[s].ok == ok)
            len += (size_t)snprintf(out + len, cap - len, "%s%d", len ? ", " : "", s);
}

/* The manifest of x, built into j->exported (replacing the one "in progress"). */
static moe_status build_manifest(struct job *j, const struct job_export *x, char *missing,
                                 size_t cap) {
    Moed__V1__ExportManifest m = MOED__V1__EXPORT_MANIFEST__INIT;
    Moed__V1__ExportedSlot *rows = calloc((size_t)x->slots, sizeof *rows);
    Moed__V1__ExportedSlot **ptrs = calloc((size_t)x->slots, sizeof *ptrs);
    int32_t *lost = calloc((size_t)x->slots, sizeof *lost);
    if (!rows || !ptrs || !lost) {
        free(rows), free(ptrs), free(lost);
        return moe_fail(MOE_ENOMEM, "out of memory");
    }
    size_t len = 0;
    missing[0] = 0;
    for (int s = 0; s < x->slots; s++) {
        const struct export_slot *o = &x->out[s];
        if (!o->ok) {
            lost[m.n_missing++] = s;
            len += (size_t)snprintf(missing + len, len < cap ? cap - len : 0, "%sslot %d: %s",
                                    len ? "; " : "", s, o->why);
            continue;
        }
        Moed__V1__ExportedSlot r = MOED__V1__EXPORTED_SLOT__INIT;
        r.slot = s;
        r.worker_id = (char *)o->worker_id;
        r.host = (char *)o->host;
        r.path = (char *)o->path;
        r.bytes = o->bytes;
        r.crc32c = o->crc32c;
        rows[m.n_slots] = r;
        ptrs[m.n_slots] = &rows[m.n_slots];
        m.n_slots++;
    }
    m.job_id = j->id;
    m.step = x->step;
    m.slots = ptrs;
    m.missing = lost;
    m.why_missing = missing;
    m.complete = m.n_missing == 0;
    Moed__V1__ExportManifest *copy = (Moed__V1__ExportManifest *)pb_clone(&m.base);
    free(rows), free(ptrs), free(lost);
    if (!copy) return moe_fail(MOE_ENOMEM, "out of memory");
    if (j->exported) moed__v1__export_manifest__free_unpacked(j->exported, NULL);
    j->exported = copy;
    return MOE_OK;
}

static void finish_export(struct coordinator *co, struct job *j) {
    struct job_export *x = j->exp;
    char missing[1500], ok[200], bad[200];
    int64_t bytes = 0;
    for (int s = 0; s < x->slots; s++) bytes += x->out[s].ok ? x->out[s].bytes : 0;
    slot_list(x, 1, ok, sizeof ok);
    slot_list(x, 0, bad, sizeof bad);
    double secs = (double)(moe_wall_ms() - x->started_ms) / 1000.0;
    if (build_manifest(j, x, missing, sizeof missing) != MOE_OK) {
        LOG_ERROR("%s: cannot record its export: %s", j->id, moe_errmsg());
    } else if (j->exported->complete) {
        job_event(co, j, 1, "exported", "exported step %lld: slots %s complete (%lld bytes in "
                  "%.1f s); `moectl submit SPEC --resume-from %s` continues it",
                  (long long)x->step, ok, (long long)bytes, secs, j->id);
    } else if (j->exported->n_slots) {
        job_event(co, j, 1, "export_failed", "exported step %lld: slots %s; slot%s %s missing: "
                  "%s", (long long)x->step, ok, strchr(bad, ',') || strchr(bad, '-') ? "s" : "",
                  bad, missing);
    } else {
        job_event(co, j, 1, "export_failed", "nothing exported: %s", missing);
    }
    j->exp = NULL;
    job_export_free(x);
    worker_call_stop_all(co, j); // their state is on disk, or cannot be
}

/* ---- resume ---- */

static const char *file_host(const struct job *j, int s) {
    for (size_t i = 0; i < j->resume->n_slots; i++)
        if (j->resume->slots[i]->slot == s) return j->resume->slots[i]->host;
    return NULL;
}

void export_prefer_hosts(const struct job *j, struct worker **chosen) {
    if (!j->resume || !strcmp(j->backend, "mpi")) return; // mpi: slot = the worker's rank
    for (int p = 0; p < j->pods; p++) {
        struct worker **pod = chosen + p * j->slots;
        for (int s = 0; s < j->slots; s++) {
            const char *want = file_host(j, s);
            if (!want || !want[0] || !strcmp(pod[s]->host, want)) continue;
            for (int o = s + 1; o < j->slots; o++) { // a later slot's worker on that host
                const char *theirs = file_host(j, o);
                if (strcmp(pod[o]->host, want) != 0 || (theirs && !strcmp(pod[o]->host, theirs)))
                    continue;
                struct worker *w = pod[s];
                pod[s] = pod[o];
                pod[o] = w;
                break;
            }
        }
    }
}

/* The first field of the new spec b that would change the math of a's continuation, or NULL:
 * the mesh's shape, the model, the optimizer (but total_steps, which is run.steps), the data,
 * the seed, the batch, the starting point and the teacher. */
static const char *spec_differs(const struct job_spec *a, const struct job_spec *b) {
    struct adamw_config oa = a->optimizer, ob = b->optimizer;
    oa.total_steps = ob.total_steps = 0;
    const struct data_spec *da = &a->data, *db = &b->data;
    if (a->mesh.pods != b->mesh.pods || a->mesh.slots != b->mesh.slots) return "mesh (pods x slots)";
    if (strcmp(a->mesh.sync, b->mesh.sync) != 0 || a->mesh.outer_every != b->mesh.outer_every ||
        a->mesh.outer_lr != b->mesh.outer_lr || a->mesh.outer_momentum != b->mesh.outer_momentum ||
        a->mesh.outer_overlap != b->mesh.outer_overlap ||
        strcmp(a->mesh.outer_quant, b->mesh.outer_quant) != 0)
        return "mesh.sync (with mesh.outer_every, outer_lr, outer_momentum, outer_overlap, "
               "outer_quant)";
    if (memcmp(&a->model, &b->model, sizeof a->model) != 0) return "model";
    if (memcmp(&oa, &ob, sizeof oa) != 0) return "optimizer";
    if (a->run.seed != b->run.seed) return "run.seed";
    if (a->run.batch_size != b->run.batch_size) return "run.batch_size";
    if (a->run.micro_batch != b->run.micro_batch) return "run.micro_batch";
    if (strcmp(a->run.init_from, b->run.init_from) != 0) return "run.init_from";
    if (da->n_sources != db->n_sources) return "data.sources";
    for (int i = 0; i < da->n_sources; i++)
        if (strcmp(da->sources[i].path, db->sources[i].path) != 0 ||
            da->sources[i].weight != db->sources[i].weight)
            return "data.sources";
    if (da->n_schedule != db->n_schedule ||
        memcmp(da->schedule, db->schedule, sizeof da->schedule[0] * (size_t)da->n_schedule) != 0)
        return "data.schedule";
    if (da->val_fraction != db->val_fraction) return "data.val_fraction";
    if (strcmp(da->tokenizer, db->tokenizer) != 0) return "data.tokenizer";
    if (strcmp(da->prepared, db->prepared) != 0) return "data.prepared";
    if (strcmp(a->distill.teacher, b->distill.teacher) != 0 || a->distill.alpha != b->distill.alpha ||
        a->distill.temperature != b->distill.temperature)
        return "distill";
    return NULL;
}

static moe_status check_export(const struct job *old) {
    if (old->state != MOED__V1__JOB_STATE__JOB_FAILED &&
        old->state != MOED__V1__JOB_STATE__JOB_CANCELLED)
        return moe_fail(MOE_EINVAL, "--resume-from %s: the job is %s; only a failed or "
                        "cancelled job can be resumed", old->id, job_state_name(old->state));
    if (old->export_due || old->exp)
        return moe_fail(MOE_EINVAL, "--resume-from %s: its survivors are still writing its "
                        "state; try again when `moectl status %s` shows the export", old->id,
                        old->id);
    const Moed__V1__ExportManifest *m = old->exported;
    if (!m)
        return moe_fail(MOE_EINVAL, "--resume-from %s: the job left no export (it never ran, "
                        "or its mesh keeps no copy of its state: mesh.replicas < 2)", old->id);
    if (!m->complete)
        return moe_fail(MOE_EINVAL, "--resume-from %s: its export at step %lld is incomplete: "
                        "%s", old->id, (long long)m->step,
                        m->why_missing[0] ? m->why_missing : "slot files missing");
    return MOE_OK;
}

moe_status export_check_resume(struct coordinator *co, const char *from, const char *spec_json,
                               const Moed__V1__ExportManifest **out) {
    struct job *old = jobs_find(co, from);
    if (!old) return moe_fail(MOE_ENOTFOUND, "--resume-from %.64s: no such job", from);
    CHECK(check_export(old));
    struct job_spec a, b;
    spec_defaults(&a);
    spec_defaults(&b);
    CHECK(spec_parse(&a, old->spec_json, strlen(old->spec_json), "stored spec"));
    CHECK(spec_parse(&b, spec_json, strlen(spec_json), "spec"));
    const char *what = spec_differs(&a, &b);
    if (what)
        return moe_fail(MOE_EINVAL, "--resume-from %s: the spec's %s differs from the job's; "
                        "only run.steps and the knobs that do not change the math may",
                        old->id, what);
    if (b.run.steps <= old->exported->step)
        return moe_fail(MOE_EINVAL, "--resume-from %s: run.steps = %ld, but the export is "
                        "already at step %lld", old->id, b.run.steps,
                        (long long)old->exported->step);
    *out = old->exported;
    return MOE_OK;
}
