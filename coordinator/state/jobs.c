/*
 * jobs.c — the job table and each job's record (see jobs.h).
 */
#include "jobs.h"

#include "workers.h" // uthash, as the worker table uses it

#include "../../common/clock.h"
#include "../../common/log.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the table ---- */

/* The table is in submission order, which is ascending job number (jobs_add appends the
 * newest, jobs_load reads them in key order), so a number is found by bisection. */
int jobs_index_after(const struct coordinator *co, long num) {
    int lo = 0, hi = co->n_jobs;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (co->jobs[mid]->num <= num) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

struct slot_index;
static struct slot_index *slot_index_new(const struct job *j);
static void slot_index_free(struct slot_index *x);

struct job *jobs_find(struct coordinator *co, const char *id) {
    if (!id || strncmp(id, "job-", 4) != 0 || id[4] < '0' || id[4] > '9') return NULL;
    long num = strtol(id + 4, NULL, 10);
    int i = jobs_index_after(co, num - 1);
    if (i < co->n_jobs && co->jobs[i]->num == num && strcmp(co->jobs[i]->id, id) == 0)
        return co->jobs[i];
    return NULL;
}

static struct job *job_new(void) {
    struct job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->upload_fd = -1;
    return j;
}

void job_read_mesh(struct job *j, const struct mesh_spec *m) {
    j->timeout_s = m->timeout_s;
    j->recoverable = mesh_recoverable(m);
    j->replicas = m->replicas;
    j->buddies = mesh_buddies(m);
    j->spare_wait_s = m->spare_wait_s;
    j->partition_wait_s = m->partition_wait_s;
    j->move_to_spare = m->move_to_spare;
}

struct job *job_create(struct coordinator *co, const struct job_spec *spec) {
    struct job *j = job_new();
    if (!j) return NULL;
    j->num = co->next_job;
    snprintf(j->id, sizeof j->id, "job-%ld", j->num);
    snprintf(j->name, sizeof j->name, "%s", spec->name);
    j->state = MOED__V1__JOB_STATE__JOB_QUEUED;
    j->total_steps = spec->run.steps;
    j->created_ms = moe_wall_ms();
    j->spec_json = spec_to_json(spec);
    j->pods = spec->mesh.pods;
    j->slots = spec->mesh.slots;
    snprintf(j->backend, sizeof j->backend, "%s", spec->mesh.backend);
    job_read_mesh(j, &spec->mesh);
    j->bindings = calloc((size_t)job_n_slots(j), sizeof *j->bindings);
    j->by_worker = slot_index_new(j);
    /* the data-plane key: the job's workers prove it to each other (docs/dataplane.md) */
    if (!j->spec_json || !j->bindings || RAND_bytes(j->data_key, sizeof j->data_key) != 1) {
        job_free(j);
        return NULL;
    }
    return j;
}

void job_free(struct job *j) {
    job_drop_recovery(j);
    free(j->hashes);
    free(j->agreed);
    repair_watch_free(j->repair);
    free(j->restore_from);
    free(j->spec_json);
    free(j->bindings);
    slot_index_free(j->by_worker);
    if (j->last) moed__v1__step_metrics__free_unpacked(j->last, NULL);
    if (j->exported) moed__v1__export_manifest__free_unpacked(j->exported, NULL);
    if (j->resume) moed__v1__export_manifest__free_unpacked(j->resume, NULL);
    job_export_free(j->exp);
    for (int i = 0; i < j->n_recent; i++)
        moed__v1__event__free_unpacked(j->recent[(j->recent_head + i) % JOB_RECENT_EVENTS], NULL);
    if (j->upload_fd >= 0) close(j->upload_fd);
    for (struct watcher *w = j->watchers; w; w = w->next) w->job = NULL;
    free(j);
}

moe_status jobs_delete_records(struct coordinator *co, struct job *const *del, int n) {
    if (n <= 0) return MOE_OK;
    struct store_batch *b = store_batch_new();
    for (int i = 0; i < n; i++) {
        if (!job_is_final(del[i])) {
            store_batch_free(b);
            return moe_fail(MOE_EINVAL, "%s is %s: only an ended job can be deleted", del[i]->id,
                            job_state_name(del[i]->state));
        }
        store_batch_delete_job(b, del[i]->id);
    }
    return store_batch_commit(co->store, b, 1); // gone for good before anything else goes
}

void jobs_drop(struct coordinator *co, struct job *const *del, int n) {
    /* One pass over the table, however many go. */
    for (int i = 0; i < n; i++) del[i]->deleted = 1;
    int kept = 0;
    for (int i = 0; i < co->n_jobs; i++) {
        struct job *j = co->jobs[i];
        if (j->deleted) job_free(j); // its watchers (if any are still closing) let go of it
        else co->jobs[kept++] = j;
    }
    co->n_jobs = kept;
}

moe_status jobs_add(struct coordinator *co, struct job *j) {
    if (co->n_jobs == co->cap_jobs) {
        int cap = co->cap_jobs ? co->cap_jobs * 2 : 64;
        struct job **nj = realloc(co->jobs, (size_t)cap * sizeof *nj);
        if (!nj) return moe_fail(MOE_ENOMEM, "out of memory for the job table");
        co->jobs = nj;
        co->cap_jobs = cap;
    }
    co->jobs[co->n_jobs++] = j;
    return MOE_OK;
}

/* ---- questions ---- */

const char *job_state_name(Moed__V1__JobState s) {
    switch (s) {
    case MOED__V1__JOB_STATE__JOB_QUEUED: return "QUEUED";
    case MOED__V1__JOB_STATE__JOB_RUNNING: return "RUNNING";
    case MOED__V1__JOB_STATE__JOB_SUCCEEDED: return "SUCCEEDED";
    case MOED__V1__JOB_STATE__JOB_FAILED: return "FAILED";
    case MOED__V1__JOB_STATE__JOB_CANCELLED: return "CANCELLED";
    default: return "UNSPECIFIED";
    }
}

int job_is_final(const struct job *j) {
    return j->state == MOED__V1__JOB_STATE__JOB_SUCCEEDED ||
           j->state == MOED__V1__JOB_STATE__JOB_FAILED ||
           j->state == MOED__V1__JOB_STATE__JOB_CANCELLED;
}

int job_state_allowed(const struct job *j, Moed__V1__JobState to) {
    switch (j->state) {
    case MOED__V1__JOB_STATE__JOB_QUEUED:
        return to == MOED__V1__JOB_STATE__JOB_RUNNING || to == MOED__V1__JOB_STATE__JOB_CANCELLED;
    case MOED__V1__JOB_STATE__JOB_RUNNING:
        return to == MOED__V1__JOB_STATE__JOB_QUEUED || to == MOED__V1__JOB_STATE__JOB_SUCCEEDED ||
               to == MOED__V1__JOB_STATE__JOB_FAILED || to == MOED__V1__JOB_STATE__JOB_CANCELLED;
    default: return 0; // a final state is final
    }
}

struct slot_entry {
    const char *id; // the binding's worker_id: the index is rebuilt before it could change
    int k;
    UT_hash_handle hh;
};

struct slot_index {
    int valid;                 // 1: current; 0: rebuild on the next lookup; -1: no memory, scan
    struct slot_entry *entries; // one per slot
    struct slot_entry *head;
};

static struct slot_index *slot_index_new(const struct job *j) {
    struct slot_index *x = calloc(1, sizeof *x);
    if (x) x->entries = calloc((size_t)job_n_slots(j), sizeof *x->entries);
    if (x && !x->entries) {
        free(x);
        x = NULL;
    }
    return x;
}

static void slot_index_free(struct slot_index *x) {
    if (!x) return;
    HASH_CLEAR(hh, x->head);
    free(x->entries);
    free(x);
}

/* O(pods * slots), once after each change of the binding. */
static void slot_index_build(const struct job *j, struct slot_index *x) {
    HASH_CLEAR(hh, x->head);
    unsigned wanted = 0;
    for (int k = 0; k < job_n_slots(j); k++) {
        const char *id = j->bindings[k].worker_id;
        struct slot_entry *e = NULL;
        if (!id[0]) continue;
        HASH_FIND(hh, x->head, id, strlen(id), e);
        if (e) continue; // a worker that plays two slots: the first one, as a scan finds it
        x->entries[k].id = id;
        x->entries[k].k = k;
        HASH_ADD_KEYPTR(hh, x->head, id, strlen(id), &x->entries[k]);
        wanted++;
    }
    x->valid = HASH_COUNT(x->head) == wanted ? 1 : -1;
}

int job_slot_of(const struct job *j, const char *worker_id) {
    struct slot_index *x = j->by_worker;
    if (x && x->valid == 0) slot_index_build(j, x);
    if (x && x->valid == 1) {
        struct slot_entry *e = NULL;
        HASH_FIND(hh, x->head, worker_id, strlen(worker_id), e);
        return e ? e->k : -1;
    }
    for (int k = 0; k < job_n_slots(j); k++) // O(pods * slots): only without memory for the index
        if (strcmp(j->bindings[k].worker_id, worker_id) == 0) return k;
    return -1;
}

void job_bindings_changed(struct job *j) {
    if (j->by_worker) j->by_worker->valid = 0;
}

double job_eta_seconds(const struct job *j) {
    /* a recovery (or a partition held) lasts as long as it lasts: no estimate meanwhile */
    if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING || j->sec_per_step <= 0 || j->recovering)
        return 0;
    return (double)(j->total_steps - j->step) * j->sec_per_step;
}

void recovery_answers_free(struct recovery *r, int n) {
    if (!r->ans) return;
    for (int k = 0; k < n; k++) free(r->ans[k].copies);
    free(r->ans);
    r->ans = NULL;
}

void job_export_free(struct job_export *x) {
    if (!x) return;
    recovery_answers_free(&(struct recovery){.ans = x->ans}, x->n);
    free(x->out);
    free(x);
}

void repair_watch_free(struct repair_watch *w) {
    if (!w) return;
    free(w->worker_id);
    free(w->have);
    free(w->sha);
    free(w->replayed);
    free(w->replay_sha);
    free(w);
}

void job_drop_recovery(struct job *j) {
    if (j->rec) {
        recovery_answers_free(j->rec, job_n_slots(j));
        free(j->rec->restored);
        free(j->rec);
    }
    j->rec = NULL;
    j->recovering = 0;
    j->recovery_since_ms = 0;
}

size_t job_recent_events(const struct job *j, Moed__V1__Event **out) {
    for (int i = 0; i < j->n_recent; i++)
        out[i] = j->recent[(j->recent_head + i) % JOB_RECENT_EVENTS];
    return (size_t)j->n_recent;
}

void job_recent_push(struct job *j, Moed__V1__Event *copy) {
    int slot = (j->recent_head + j->n_recent) % JOB_RECENT_EVENTS;
    if (j->n_recent == JOB_RECENT_EVENTS) {
        moed__v1__event__free_unpacked(j->recent[j->recent_head], NULL);
        slot = j->recent_head;
        j->recent_head = (j->recent_head + 1) % JOB_RECENT_EVENTS;
    } else {
        j->n_recent++;
    }
    j->recent[slot] = copy;
}

/* ---- texts ---- */

const char *job_slot_text(const struct job *j, int k, char *buf, size_t cap) {
    snprintf(buf, cap, "(%d, %d)", k / j->slots, k % j->slots);
    return buf;
}

const char *job_slot_where(const struct job *j, int k, char *buf, size_t cap) {
    if (k < 0)
        snprintf(buf, cap, "the %d x %d mesh, epoch %llu", j->pods, j->slots,
                 (unsigned long long)j->epoch);
    else
        snprintf(buf, cap, "slot (%d, %d) of the %d x %d mesh, epoch %llu", k / j->slots,
                 k % j->slots, j->pods, j->slots, (unsigned long long)j->epoch);
    return buf;
}

void job_binding_text(const struct job *j, char *out, size_t cap) {
    int n = job_n_slots(j);
    if (n == 1) {
        snprintf(out, cap, "slot (0, 0) bound to %s at %s", j->bindings[0].worker_id,
                 j->bindings[0].address);
        return;
    }
    size_t o = (size_t)snprintf(out, cap, "epoch %llu: %d x %d mesh (%s) bound:",
                                (unsigned long long)j->epoch, j->pods, j->slots, j->backend);
    for (int k = 0; k < n && o < cap; k++)
        o += (size_t)snprintf(out + o, cap - o, "%s (%d, %d) %s", k ? "," : "", k / j->slots,
                              k % j->slots, j->bindings[k].worker_id);
}

/* The rank a "rank N" at p speaks of, or -1: a number outside the mesh, the writer's own
 * rank ("we are rank 0") or what an unproven peer claimed to be ("refused rank 0: it is in
 * job-4"): the worker the binding has at that rank is not who that was. */
static long rank_at(const struct job *j, const char *why, const char *p) {
    char *end;
    long r = strtol(p + 5, &end, 10);
    if (end == p + 5 || r < 0 || r >= job_n_slots(j)) return -1;
    static const char *const not_the_peer[] = {"we are ", "refused "};
    for (size_t i = 0; i < sizeof not_the_peer / sizeof not_the_peer[0]; i++) {
        size_t len = strlen(not_the_peer[i]);
        if ((size_t)(p - why) >= len && !strncmp(p - len, not_the_peer[i], len)) return -1;
    }
    return r;
}

int job_blamed_rank(const struct job *j, const char *why, int reporter) {
    long blamed = -1;
    for (const char *p = strstr(why, "rank "); p; p = strstr(p + 5, "rank ")) {
        long r = rank_at(j, why, p);
        if (r >= 0 && r != reporter) blamed = r; // "rank 0 gave up ... because of rank 2": 2
    }
    return (int)blamed;
}

void job_name_ranks(const struct job *j, char *why, size_t cap) {
    int n = job_n_slots(j);
    char *seen = calloc((size_t)n, 1);
    if (!seen) return;
    for (const char *p = strstr(why, "rank "); p; p = strstr(p + 5, "rank ")) {
        long r = rank_at(j, why, p);
        if (r < 0 || seen[r]) continue;
        seen[r] = 1;
        size_t len = strlen(why);
        snprintf(why + len, cap - len, " [rank %ld = slot (%ld, %ld) on %s at %s]", r,
                 r / j->slots, r % j->slots, j->bindings[r].worker_id, j->bindings[r].address);
    }
    free(seen);
}

/* ---- links ---- */

static const char *const link_names[] = {[JOB_LINK_SHM] = "shm", [JOB_LINK_TCP] = "tcp",
                                         [JOB_LINK_MPI] = "mpi"};
#define N_LINK_NAMES ((int)(sizeof link_names / sizeof link_names[0]))

const char *job_link_name(int code) {
    return code > JOB_LINK_NONE && code < N_LINK_NAMES ? link_names[code] : NULL;
}

int job_link_code(const char *name) {
    for (int c = JOB_LINK_NONE + 1; name && c < N_LINK_NAMES; c++)
        if (!strcmp(name, link_names[c])) return c;
    return JOB_LINK_NONE;
}

int job_record_links(struct job *j, int k, Moed__V1__PeerLink *const *links, size_t n) {
    struct binding *b = &j->bindings[k];
    int taken = 0, size = job_n_slots(j);
    memset(b->links, 0, sizeof b->links);
    for (size_t i = 0; i < n; i++) {
        const Moed__V1__PeerLink *l = links[i];
        if (l->pod < 0 || l->pod >= j->pods || l->slot < 0 || l->slot >= j->slots) continue;
        int q = l->pod * j->slots + l->slot, code = job_link_code(l->transport);
        if (q >= size || q == k || q >= JOB_LINKS_MAX || !code) continue;
        taken += !b->links[q];
        b->links[q] = (uint8_t)code;
    }
    return taken;
}

/* ---- protobuf views ---- */

static Moed__V1__SlotStatus slot_status(const struct job *j, int k) {
    const struct binding *b = &j->bindings[k];
    Moed__V1__SlotStatus ss = MOED__V1__SLOT_STATUS__INIT;
    ss.pod = k / j->slots;
    ss.slot = k % j->slots;
    ss.worker_id = (char *)b->worker_id;
    ss.worker_address = (char *)b->address;
    ss.data_address = (char *)b->data_address;
    ss.step = b->step;
    ss.step_seconds = b->step_seconds;
    ss.comm_seconds = b->comm_seconds;
    ss.bytes_alltoall = b->bytes_alltoall;
    ss.bytes_allreduce = b->bytes_allreduce;
    ss.total_bytes_alltoall = b->total_alltoall;
    ss.total_bytes_allreduce = b->total_allreduce;
    ss.ended = b->ended;
    ss.ok = b->ok;
    ss.error = (char *)b->error;
    ss.mpi_rank = b->mpi_rank;
    return ss;
}

static void job_info(Moed__V1__JobInfo *info, const struct job *j) {
    info->job_id = (char *)j->id;
    info->name = (char *)j->name;
    info->state = j->state;
    info->step = j->step;
    info->total_steps = j->total_steps;
    info->loss = j->loss;
    info->val_loss = j->val_loss;
    info->created_unix_ms = j->created_ms;
    info->started_unix_ms = j->started_ms;
    info->finished_unix_ms = j->finished_ms;
    info->error = (char *)j->error;
    info->pods = j->pods;
    info->slots = j->slots;
    info->model_bytes = j->model_bytes;
    info->epoch = j->epoch;
    info->backend = (char *)j->backend;
    info->committed_step = j->committed_step;
    info->recoveries = j->recoveries;
    info->moves = j->moves;
    info->recovering = j->recovering;
    if (j->rec && j->rec->part.since_ms) { // a partition held (policy/partition.c)
        info->held = (char *)j->rec->part.text;
        info->held_since_unix_ms = j->rec->part.since_ms;
    }
    info->exported = j->exported;
    if (j->resume) {
        info->resumed_from = j->resume->job_id;
        info->resumed_step = j->resume->step;
    }
}

Moed__V1__SlotBinding job_slot_binding(const struct job *j, int k) {
    Moed__V1__SlotBinding b = MOED__V1__SLOT_BINDING__INIT;
    b.pod = k / j->slots;
    b.slot = k % j->slots;
    b.worker_id = (char *)j->bindings[k].worker_id;
    b.worker_address = (char *)j->bindings[k].address;
    b.data_address = (char *)j->bindings[k].data_address;
    return b;
}

/* The reported links of the view's slots (first .. first + n_slots) into its PeerLink array
 * (one allocation for all). */
static void view_links(struct job_view *v, const struct job *j, int first) {
    int n = (int)v->n_slots, all = job_n_slots(j), lim = all < JOB_LINKS_MAX ? all : JOB_LINKS_MAX;
    size_t total = 0;
    for (int k = first; k < first + n; k++)
        for (int q = 0; q < lim; q++) total += j->bindings[k].links[q] != JOB_LINK_NONE;
    if (!total) return;
    v->link = calloc(total, sizeof *v->link);
    v->link_ptrs = calloc(total, sizeof *v->link_ptrs);
    if (!v->link || !v->link_ptrs) return; // a view without links beats no answer
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        const struct binding *b = &j->bindings[first + i];
        v->slot[i].links = v->link_ptrs + at;
        for (int q = 0; q < lim; q++) {
            const char *name = job_link_name(b->links[q]);
            if (!name) continue;
            Moed__V1__PeerLink l = MOED__V1__PEER_LINK__INIT;
            l.pod = q / j->slots;
            l.slot = q % j->slots;
            l.transport = (char *)name;
            v->link[at] = l;
            v->link_ptrs[at] = &v->link[at];
            at++;
            v->slot[i].n_links++;
        }
    }
}

void job_view_fill(struct job_view *v, const struct job *j) {
    job_view_fill_slots(v, j, 0, job_n_slots(j));
}

void job_view_fill_slots(struct job_view *v, const struct job *j, int first, int n) {
    Moed__V1__JobInfo init = MOED__V1__JOB_INFO__INIT;
    v->info = init;
    v->link = NULL;
    v->link_ptrs = NULL;
    v->bind = calloc((size_t)n + 1, sizeof *v->bind);
    v->bind_ptrs = calloc((size_t)n + 1, sizeof *v->bind_ptrs);
    v->slot = calloc((size_t)n + 1, sizeof *v->slot);
    v->slot_ptrs = calloc((size_t)n + 1, sizeof *v->slot_ptrs);
    if (!v->bind || !v->bind_ptrs || !v->slot || !v->slot_ptrs) n = 0; // a view without
                                                                     // bindings beats no answer
    v->n_slots = (size_t)n;
    int bound = 0;
    for (int i = 0; i < n; i++) {
        int k = first + i;
        v->slot[i] = slot_status(j, k);
        v->slot_ptrs[i] = &v->slot[i];
        if (!j->bindings[k].worker_id[0]) continue; // unbound slots (a queued job) are left out
        v->bind[bound] = job_slot_binding(j, k);
        v->bind_ptrs[bound] = &v->bind[bound];
        bound++;
    }
    job_info(&v->info, j);
    v->info.n_bindings = (size_t)bound;
    v->info.bindings = v->bind_ptrs;
    view_links(v, j, first);
}

/* How bad a slot's plight is, for PodSummary.worst: the higher, the worse. */
static const char *const plights[] = {"ended", "training", "starting", "unbound", "lost",
                                      "failed"};

static int slot_plight(const struct binding *b, const struct worker *w) {
    if (b->ended) return b->ok ? 0 : 5;
    if (!b->worker_id[0]) return 3;
    if (!w || !worker_alive(w)) return 4;
    return b->running ? 1 : 2;
}

/* One slot into its pod's summary. */
static void pod_count(Moed__V1__PodSummary *ps, const struct binding *b, const struct worker *w,
                      int *worst) {
    int plight = slot_plight(b, w);
    if (plight > *worst) *worst = plight;
    ps->ended += b->ended;
    ps->failed += b->ended && !b->ok;
    ps->training += b->running && !b->ended;
    if (!b->worker_id[0]) return;
    ps->alive += w && worker_alive(w);
    ps->min_step = ps->bound && ps->min_step < b->step ? ps->min_step : b->step;
    ps->max_step = ps->bound && ps->max_step > b->step ? ps->max_step : b->step;
    ps->bound++;
}

void job_pod_summaries(struct coordinator *co, const struct job *j, Moed__V1__PodSummary *out,
                       Moed__V1__PodSummary **ptrs) {
    for (int p = 0; p < j->pods; p++) {
        Moed__V1__PodSummary ps = MOED__V1__POD_SUMMARY__INIT;
        ps.pod = p;
        ps.slots = j->slots;
        int worst = 0;
        for (int s = 0; s < j->slots; s++) {
            const struct binding *b = &j->bindings[p * j->slots + s];
            pod_count(&ps, b, b->worker_id[0] ? workers_find(co, b->worker_id) : NULL, &worst);
        }
        ps.worst = (char *)plights[worst];
        out[p] = ps;
        ptrs[p] = &out[p];
    }
}

void job_view_free(struct job_view *v) {
    free(v->bind);
    free(v->bind_ptrs);
    free(v->slot);
    free(v->slot_ptrs);
    free(v->link);
    free(v->link_ptrs);
}

/* ---- the record ---- */

void job_batch(struct store_batch *b, const struct job *j) {
    Moed__Store__JobRecord rec = MOED__STORE__JOB_RECORD__INIT;
    struct job_view v;
    job_view_fill(&v, j);
    rec.job = &v.info;
    rec.spec_json = j->spec_json;
    rec.next_event = j->next_event;
    rec.n_slots = v.n_slots;
    rec.slots = v.slot_ptrs;
    for (size_t k = 0; k < v.n_slots; k++) v.slot[k].n_links = 0; // n^2 entries: not stored
    rec.restore_step = j->restore_step;
    if (j->restore_from) {
        rec.n_restore_from = (size_t)job_n_slots(j);
        rec.restore_from = j->restore_from;
    }
    rec.recovery_since_ms = j->recovery_since_ms;
    rec.data_key.len = sizeof j->data_key;
    rec.data_key.data = (uint8_t *)j->data_key;
    rec.resume = j->resume;
    store_batch_job(b, &rec); // packs now
    job_view_free(&v);
}

void jobs_flush_records(struct coordinator *co) {
    struct store_batch *b = NULL;
    for (int i = 0; i < co->n_jobs; i++) {
        struct job *j = co->jobs[i];
        if (!j->record_dirty) continue;
        if (!b && !(b = store_batch_new())) return;
        job_batch(b, j);
        j->record_dirty = 0;
    }
    if (b && store_batch_commit(co->store, b, 0) != MOE_OK)
        LOG_WARN("store: the jobs' progress is not stored: %s", moe_errmsg());
}

/* ---- loading ---- */

static void load_bindings(struct job *j, const Moed__Store__JobRecord *r) {
    const Moed__V1__JobInfo *in = r->job;
    int n = job_n_slots(j);
    for (size_t i = 0; i < in->n_bindings; i++) {
        const Moed__V1__SlotBinding *b = in->bindings[i];
        int k = b->pod * j->slots + b->slot;
        if (k < 0 || k >= n) continue;
        snprintf(j->bindings[k].worker_id, sizeof j->bindings[k].worker_id, "%s", b->worker_id);
        snprintf(j->bindings[k].address, sizeof j->bindings[k].address, "%s", b->worker_address);
        snprintf(j->bindings[k].data_address, sizeof j->bindings[k].data_address, "%s",
                 b->data_address);
    }
    for (size_t i = 0; i < r->n_slots; i++) {
        const Moed__V1__SlotStatus *ss = r->slots[i];
        int k = ss->pod * j->slots + ss->slot;
        if (ss->pod < 0 || ss->slot < 0 || ss->slot >= j->slots || k >= n) continue;
        struct binding *bd = &j->bindings[k];
        bd->mpi_rank = ss->mpi_rank;
        bd->step = (long)ss->step;
        bd->step_seconds = ss->step_seconds;
        bd->comm_seconds = ss->comm_seconds;
        bd->bytes_alltoall = ss->bytes_alltoall;
        bd->bytes_allreduce = ss->bytes_allreduce;
        bd->total_alltoall = ss->total_bytes_alltoall;
        bd->total_allreduce = ss->total_bytes_allreduce;
        bd->ended = ss->ended;
        bd->ok = ss->ok;
        snprintf(bd->error, sizeof bd->error, "%s", ss->error);
    }
}

/* The mesh knobs are in the stored spec (JobInfo carries only pods, slots and backend). */
static void load_mesh(struct job *j, const char *spec_json) {
    struct job_spec spec;
    spec_defaults(&spec);
    if (spec_json && spec_parse(&spec, spec_json, strlen(spec_json), "stored spec") != MOE_OK)
        spec_defaults(&spec);
    spec.mesh.pods = j->pods; // what the job was bound as, whatever the stored spec says
    spec.mesh.slots = j->slots;
    snprintf(spec.mesh.backend, sizeof spec.mesh.backend, "%s", j->backend);
    job_read_mesh(j, &spec.mesh);
}

/* The export manifests. One stored while the survivors were writing was cut short by our
 * restart: the workers were told to stop when they re-registered, so it stays incomplete. */
static void load_export(struct job *j, const Moed__V1__JobInfo *in,
                        const Moed__Store__JobRecord *r) {
    if (in->exported)
        j->exported = (Moed__V1__ExportManifest *)pb_clone(&in->exported->base);
    if (r->resume) j->resume = (Moed__V1__ExportManifest *)pb_clone(&r->resume->base);
    if (j->exported && j->exported->in_progress) {
        j->exported->in_progress = 0;
        j->exported->complete = 0;
        if (j->exported->why_missing != protobuf_c_empty_string) free(j->exported->why_missing);
        j->exported->why_missing = strdup("the coordinator restarted while the survivors "
                                          "were writing it");
    }
}

static int load_job(const Moed__Store__JobRecord *r, void *arg) {
    struct coordinator *co = arg;
    const Moed__V1__JobInfo *in = r->job;
    struct job *j = job_new();
    if (!j) return 1;
    snprintf(j->id, sizeof j->id, "%s", in->job_id);
    j->num = strtol(in->job_id + 4, NULL, 10);
    snprintf(j->name, sizeof j->name, "%s", in->name);
    j->state = in->state;
    j->step = in->step;
    j->total_steps = in->total_steps;
    j->loss = in->loss;
    j->val_loss = in->val_loss;
    j->created_ms = in->created_unix_ms;
    j->started_ms = in->started_unix_ms;
    j->finished_ms = in->finished_unix_ms;
    snprintf(j->error, sizeof j->error, "%s", in->error);
    j->spec_json = strdup(r->spec_json);
    j->pods = in->pods > 0 ? in->pods : 1;
    j->slots = in->slots > 0 ? in->slots : 1;
    j->bindings = calloc((size_t)job_n_slots(j), sizeof *j->bindings);
    j->by_worker = slot_index_new(j);
    if (j->bindings) load_bindings(j, r);
    j->epoch = in->epoch;
    snprintf(j->backend, sizeof j->backend, "%s", in->backend[0] ? in->backend : "tcp");
    load_mesh(j, r->spec_json);
    j->committed_step = in->committed_step;
    j->recoveries = in->recoveries;
    j->moves = in->moves;
    j->recovering = in->recovering;
    j->restore_step = r->restore_step;
    j->recovery_since_ms = r->recovery_since_ms;
    if (r->data_key.len == sizeof j->data_key) // else a record from before keys: a new one
        memcpy(j->data_key, r->data_key.data, sizeof j->data_key);
    else if (RAND_bytes(j->data_key, sizeof j->data_key) != 1) {
        job_free(j);
        return 1;
    }
    if (r->n_restore_from == (size_t)job_n_slots(j) &&
        (j->restore_from = calloc(r->n_restore_from, sizeof *j->restore_from)))
        memcpy(j->restore_from, r->restore_from, r->n_restore_from * sizeof *j->restore_from);
    j->model_bytes = in->model_bytes;
    j->next_event = r->next_event;
    load_export(j, in, r);
    if (!j->spec_json || !j->bindings || jobs_add(co, j) != MOE_OK) {
        job_free(j);
        return 1;
    }
    return 0;
}

static int load_event(const Moed__V1__Event *e, void *arg) {
    struct job *j = arg;
    /* an event stored without the record (job_event_deferred) just before a kill: the next
     * one takes the seq after it, not its place */
    if (e->seq >= j->next_event) j->next_event = e->seq + 1;
    Moed__V1__Event *copy = (Moed__V1__Event *)pb_clone(&e->base);
    if (copy) job_recent_push(arg, copy);
    return 0;
}

static int load_last_step(const Moed__V1__StepMetrics *m, void *arg) {
    struct job *j = arg;
    if (j->last) moed__v1__step_metrics__free_unpacked(j->last, NULL);
    j->last = (Moed__V1__StepMetrics *)pb_clone(&m->base);
    return 0;
}

moe_status jobs_load(struct coordinator *co) {
    CHECK(store_jobs_scan(co->store, load_job, co));
    for (int i = 0; i < co->n_jobs; i++) {
        struct job *j = co->jobs[i];
        CHECK(store_events_tail(co->store, j->id, JOB_RECENT_EVENTS, load_event, j));
        if (j->step > 0) CHECK(store_steps_scan(co->store, j->id, j->step, load_last_step, j));
        /* The record is written once a tick (events.c), the steps with every report of slot
         * (0, 0): the newest stored step may be past the record's, and its replicated_step is a
         * step every slot completed, so the committed step a client saw never goes down. */
        if (j->last && (long)j->last->step > j->step) j->step = (long)j->last->step;
        if (j->last && (long)j->last->replicated_step > j->committed_step)
            j->committed_step = (long)j->last->replicated_step;
    }
    return MOE_OK;
}
