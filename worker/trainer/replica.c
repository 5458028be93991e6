/* replica.c — a slot's previous version, buddy copies, fence and restore (see replica.h). */
#include "replica.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../comm/comm.h"
#include "fence_gate.h"
#include "outer.h"
#include "thread_error.h"
#include "transfer_check.h"
#include "transfer_lanes.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

/* Channel 2 carries the buddy copies: the compute thread's all-to-alls use 0, the gradient
 * reductions 1, and these overlap with both. */
enum { CH_MAIN = 0, CH_COPY = 2 };

/* The pieces of a state transfer (below, "restore"); the last only with diloco. */
enum { STATE_PIECES = 11 };

/* Two versions of the copy of another slot's experts (their parameters and moments). */
struct held {
    int slot;        // the slot index whose experts these are
    real *buf[2];    // (3 * x_n): parameters, first moments, second moments
    uint32_t *sum[2]; // (3 * xb) the sender's CRC-32C of each block of each third of buf
    long step[2];    // the step each version is from; -1: none (or being received)
    int checked[2];  // version v was compared with its sums (copy_checked): once, when a
                     //   fence is about to list it or a restore to send it
};

struct replica {
    struct trainer *t;
    int S, s, nb;
    size_t x_lo, x_n;           // the experts' floats in every arena: [x_lo, x_lo + x_n)
    size_t xb;                  // blocks of x_n floats (transfer_check.h)
    uint32_t *x_sum;            // (3 * xb) the checksums of the experts this slot sends
    int x_summed;               // x_sum already holds this step's (the hash made them)
    uint32_t *x_scratch;        // (3 * xb) a held copy's, recomputed (under gate.mu)
    struct model_state prev;    // the previous version; prev.step -1: none
    int live_valid;             // the live arenas hold a whole state (not while receiving one)
    struct held *held;          // (nb) copies of slots s-1, ..., s-nb
    int check_every;
    int n_pieces;               // of a state transfer: STATE_PIECES, one more with diloco
    int keep_prev;              // the job can recover (mesh_recoverable): keep S(t - 1)
    atomic_int flip;            // a bit flip was asked for (chaos)
    long since;                 // the step this slot (re)started from: opened or restored at
    atomic_int corrupt;         // the next state sent for a restore carries a flipped bit (chaos)
    atomic_int cut_short;       // the step was given up: the thread's hash stops where it is

    struct fence_gate gate;     // its mutex guards fenced, the versions' steps and the
                                //   update; diloco's outer step passes it too (fence_gate.h)

    /* An update in progress holds the gate; a fence meanwhile answers with what the slot will
     * hold once it is done (below, "fence"), not after it. upd_mu guards these. */
    pthread_mutex_t upd_mu;
    int updating;               // the update of `upd_live` runs (it cannot fail)
    long upd_live;
    struct state_copy upd_copies[REPLICA_MAX_COPIES];
    int upd_n;
    int fence_late;             // a fence came during the update: fenced once it ends

    /* the thread: one job per step */
    pthread_t thread;
    int thread_started;
    pthread_cond_t cv;
    int pending, running, stop;
    long job_step;
    int do_send, do_hash;
    struct thread_error err;
    uint8_t hash[32];
    long hash_step;
    int hash_ready;
};

/* ---- the copies' transfer ---- */

/* Round j of the buddy exchange over the pod: this slot sends `bytes` of `send` to slot s + j
 * and receives slot s - j's into `recv`. A group of just those two peers (one when they are
 * the same slot): an exchange over the whole pod would make every chunk wait for every slot's
 * copy thread, and those of the slots this round does not involve have no business in it. */
static moe_status exchange_round(struct replica *r, int j, const void *send, void *recv,
                                 size_t bytes) {
    struct comm *c = r->t->mesh.comm;
    struct comm_group pod, g = {.n = 2, .me = 0};
    comm_group_pod(&pod, c, r->t->mesh.pod);
    int to = (r->s + j) % r->S, from = (r->s - j + r->S) % r->S;
    size_t sb[3] = {0, bytes, 0}, rb[3] = {0, 0, 0};
    g.ranks[0] = pod.ranks[r->s];
    g.ranks[1] = pod.ranks[to];
    if (from == to) rb[1] = bytes;
    else g.ranks[g.n++] = pod.ranks[from], rb[2] = bytes;
    return comm_alltoallv(c, CH_COPY, &g, send, sb, recv, rb);
}

/* Round j's part of one arena (the parameters or a moment), in chunks: each chunk's blocks
 * are checksummed just before it goes (in round 1: every round sends the same bytes), while
 * it is in the cache, so the sender's checksums cost no separate pass over the memory. The
 * receiver does not check a copy on arrival: it checks it only if it is ever to be used
 * (copy_checked, at a fence), which is rare, where checking every arrival took a pass over
 * every received byte every step. */
static moe_status exchange_arena(struct replica *r, int j, int a, const real *send, real *recv) {
    const size_t Q = TRANSFER_LANE_CHUNK_BYTES, bytes = sizeof(real) * r->x_n;
    uint32_t *mine = r->x_sum + a * r->xb;
    for (size_t off = 0; off < bytes; off += Q) {
        size_t len = bytes - off < Q ? bytes - off : Q, b = off / TRANSFER_BLOCK_BYTES;
        const unsigned char *out = (const unsigned char *)send + off;
        if (j == 1 && !r->x_summed) transfer_checksum(out, len, mine + b, 0);
        CHECK(exchange_round(r, j, out, (unsigned char *)recv + off, len));
    }
    return MOE_OK;
}

/* Whether version v of a held copy is what its sender checksummed, computed once (under
 * gate.mu): before a fence lists it or a restore sends it. One that is not is dropped (no
 * fence lists it): a restore never starts from it. A restore re-checks whatever it sends
 * against the same sums at the new holder, so this is what keeps a damaged copy off the
 * coordinator's list, not the last line of defence. */
static int copy_checked(struct replica *r, struct held *h, int v) {
    if (h->checked[v]) return 1;
    for (int a = 0; a < 3; a++) {
        uint32_t *want = h->sum[v] + a * r->xb, *got = r->x_scratch + a * r->xb;
        transfer_checksum(h->buf[v] + (size_t)a * r->x_n, sizeof(real) * r->x_n, got, 0);
        size_t b = 0;
        while (b < r->xb && got[b] == want[b]) b++;
        if (b == r->xb) continue;
        LOG_WARN("slot (%d, %d): the buddy copy of slot %d's experts at step %ld failed its "
                 "checksum (part %d, block %zu: CRC-32C %08x, the sender's %08x): dropped",
                 r->t->mesh.pod, r->s, h->slot, h->step[v], a, b, got[b], want[b]);
        h->step[v] = -1;
        return 0;
    }
    return h->checked[v] = 1;
}

/* Sends S(step)'s experts to every buddy and receives the copies of the slots before us, each
 * into the version that does not hold the newest copy. Straight from the arenas (the live
 * state does not change before the step's update, which waits for this): the parameters and
 * each moment in chunks, no staging copy; then the checksums the receiver holds the copy to
 * (before a fence lists it, and again by whoever it restores from this copy). */
static moe_status send_copies(struct replica *r, long step) {
    const struct model *m = &r->t->model;
    const real *arena[3] = {m->param_mem, m->m_mem, m->v_mem};
    for (int j = 1; j <= r->nb; j++) {
        struct held *h = &r->held[j - 1];
        int v = h->step[0] <= h->step[1] ? 0 : 1; /* the older (or empty) one */
        pthread_mutex_lock(&r->gate.mu);
        h->step[v] = -1; /* being overwritten: not a copy until it is whole */
        pthread_mutex_unlock(&r->gate.mu);
        for (int a = 0; a < 3; a++)
            CHECK(exchange_arena(r, j, a, arena[a] + r->x_lo, h->buf[v] + (size_t)a * r->x_n));
        CHECK(exchange_round(r, j, r->x_sum, h->sum[v], sizeof(uint32_t) * 3 * r->xb));
        pthread_mutex_lock(&r->gate.mu);
        h->step[v] = step;
        h->checked[v] = 0;
        pthread_mutex_unlock(&r->gate.mu);
    }
    return MOE_OK;
}

/* transfer_checksum of one part, chunk by chunk; 0 when `stop` was set before its end. */
static int checksum_part(const void *p, size_t bytes, uint32_t *out, const atomic_int *stop) {
    const size_t Q = TRANSFER_LANE_CHUNK_BYTES;
    for (size_t at = 0; at < bytes; at += Q) {
        if (stop && atomic_load(stop)) return 0;
        transfer_checksum((const unsigned char *)p + at, bytes - at < Q ? bytes - at : Q,
                          out + at / TRANSFER_BLOCK_BYTES, 0);
    }
    return 1;
}

/* The digest data-parallel replicas compare (bit for bit): SHA-256 of the step and of the
 * CRC-32C of every 1 MiB block of the parameters, both moments and the buffers, the blocks of
 * a checked transfer (transfer_check.c): each of the first three in the three pieces of a
 * transfer (before, of and after the experts), so that the experts' blocks are the ones a
 * buddy copy is checked by, and a step that hashes gives the copy its checksums (x_sums,
 * 3 * xb, if not NULL) instead of making them twice. A flipped bit always changes its
 * block's CRC, other damage escapes with chance 2^-32 per block, and the CRCs run at 20-30
 * GB/s on one core where SHA-256 over the bytes runs at 1.8 GB/s: this is what makes
 * checking every step cheap. On the calling thread alone (the replica thread, or the loop
 * at a fence). In chunks, looking at `stop` (NULL: never) before each: a step given up does
 * not wait for the hash of a state it will not report (a recovery's detection would wait a
 * pass over it). */
static moe_status hash_arenas(const struct replica *r, long step_l, real *const arena[4],
                              const atomic_int *stop, uint8_t out[32], uint32_t *x_sums) {
    const struct model *m = &r->t->model;
    size_t hi = r->x_lo + r->x_n, bytes[10], nb = 0, x_at[3];
    const void *part[10];
    for (int a = 0; a < 3; a++) {
        part[3 * a] = arena[a], bytes[3 * a] = sizeof(real) * r->x_lo;
        part[3 * a + 1] = arena[a] + r->x_lo, bytes[3 * a + 1] = sizeof(real) * r->x_n;
        part[3 * a + 2] = arena[a] + hi, bytes[3 * a + 2] = sizeof(real) * (m->n_params - hi);
    }
    part[9] = arena[3], bytes[9] = sizeof(real) * m->n_buffers;
    for (int i = 0; i < 10; i++) {
        if (i % 3 == 1 && i < 9) x_at[i / 3] = nb;
        nb += transfer_blocks(bytes[i]);
    }
    uint32_t *sums = malloc((nb + 1) * sizeof *sums);
    EVP_MD_CTX *ctx = sums ? EVP_MD_CTX_new() : NULL;
    int64_t step = step_l;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
             EVP_DigestUpdate(ctx, &step, sizeof step);
    int whole = 1;
    for (size_t i = 0, off = 0; ok && whole && i < 10; off += transfer_blocks(bytes[i]), i++)
        whole = checksum_part(part[i], bytes[i], sums + off, stop);
    ok = ok && whole && EVP_DigestUpdate(ctx, sums, nb * sizeof *sums) &&
         EVP_DigestFinal_ex(ctx, out, NULL);
    for (int a = 0; ok && x_sums && a < 3; a++)
        memcpy(x_sums + a * r->xb, sums + x_at[a], r->xb * sizeof *sums);
    EVP_MD_CTX_free(ctx);
    free(sums);
    if (!whole) return moe_fail(MOE_EINTERNAL, "the digest of the slot's state was cut short");
    return ok ? MOE_OK : moe_fail(MOE_EINTERNAL, "the digest of the slot's state failed");
}

static moe_status hash_state(struct replica *r, const atomic_int *stop, uint8_t out[32],
                             uint32_t *x_sums) {
    const struct model *m = &r->t->model;
    real *const arena[4] = {m->param_mem, m->m_mem, m->v_mem, m->buffer_mem};
    return hash_arenas(r, m->step, arena, stop, out, x_sums);
}

static void *replica_main(void *arg) {
    struct replica *r = arg;
    prctl(PR_SET_NAME, "moe-replica"); /* in top -H, and what bench_mesh reads its CPU time by */
    pthread_mutex_lock(&r->gate.mu);
    for (;;) {
        while (!r->stop && !r->pending) pthread_cond_wait(&r->cv, &r->gate.mu);
        if (r->stop) break;
        r->pending = 0;
        r->running = 1;
        long step = r->job_step;
        int send = r->do_send, hash = r->do_hash;
        pthread_mutex_unlock(&r->gate.mu);
        /* the hash first: it makes the checksums the copies carry */
        uint8_t h[32];
        moe_status s = MOE_OK;
        int hashed = 0;
        if (hash)
            hashed = (s = hash_state(r, &r->cut_short, h, send ? r->x_sum : NULL)) == MOE_OK;
        r->x_summed = hashed && send;
        if (send && s == MOE_OK) s = send_copies(r, step);
        pthread_mutex_lock(&r->gate.mu);
        thread_error_keep(&r->err, s);
        if (hashed) {
            memcpy(r->hash, h, sizeof h);
            r->hash_step = step;
            r->hash_ready = 1;
        }
        r->running = 0;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->gate.mu);
    return NULL;
}

/* ---- open / close ---- */

moe_status replica_open(struct trainer *t) {
    struct replica *r = calloc(1, sizeof *r);
    if (!r) return moe_fail(MOE_ENOMEM, "out of memory");
    t->mesh.rep = r;
    struct model *m = &t->model;
    r->t = t;
    r->S = t->mesh.slots;
    r->s = t->mesh.slot;
    r->nb = mesh_buddies(&t->spec.mesh);
    r->check_every = t->spec.mesh.check_every;
    r->since = m->step;
    r->n_pieces = STATE_PIECES - !mesh_diloco(&t->spec.mesh);
    r->live_valid = !t->empty; /* an empty trainer offers nothing until its state arrives */
    for (int i = 0; i < MODEL_NUM_TENSORS; i++) {
        if (model_tensor_is_expert(i)) r->x_n += m->tensor_sizes[i];
        else if (i < 4) r->x_lo += m->tensor_sizes[i]; /* tensors 4..6 are the experts' */
    }
    r->xb = transfer_blocks(sizeof(real) * r->x_n);
    pthread_mutex_init(&r->gate.mu, NULL);
    pthread_mutex_init(&r->upd_mu, NULL);
    t->mesh.gate = &r->gate;
    pthread_cond_init(&r->cv, NULL);
    r->prev.step = -1;
    /* diloco: the versions a recovery returns to are the outer steps' (outer.c) */
    r->keep_prev = mesh_recoverable(&t->spec.mesh) && !mesh_diloco(&t->spec.mesh);
    if (r->keep_prev && model_state_alloc(m, &r->prev) != 0)
        return moe_fail(MOE_ENOMEM, "out of memory for the previous version of the slot's "
                        "state (%zu parameters)", m->n_params);
    if (r->nb > 0) {
        r->held = calloc((size_t)r->nb, sizeof *r->held);
        r->x_sum = calloc(3 * r->xb + 1, sizeof *r->x_sum);
        r->x_scratch = calloc(3 * r->xb + 1, sizeof *r->x_scratch);
        if (!r->held || !r->x_sum || !r->x_scratch)
            return moe_fail(MOE_ENOMEM, "out of memory for buddy copies");
        for (int j = 0; j < r->nb; j++) {
            struct held *h = &r->held[j];
            h->slot = (r->s - (j + 1) + r->S) % r->S;
            for (int v = 0; v < 2; v++) {
                h->step[v] = -1;
                if (!(h->sum[v] = calloc(3 * r->xb + 1, sizeof *h->sum[v])) ||
                    !(h->buf[v] = model_arena_alloc(3 * r->x_n)))
                    return moe_fail(MOE_ENOMEM, "out of memory for buddy copies of slot %d's "
                                    "%zu expert parameters", h->slot, r->x_n);
            }
        }
    }
    if (pthread_create(&r->thread, NULL, replica_main, r) != 0)
        return moe_fail(MOE_ENOMEM, "cannot start the replica thread");
    r->thread_started = 1;
    return MOE_OK;
}

void replica_close(struct trainer *t) {
    struct replica *r = t->mesh.rep;
    if (!r) return;
    if (r->thread_started) {
        pthread_mutex_lock(&r->gate.mu);
        while (r->running) pthread_cond_wait(&r->cv, &r->gate.mu);
        r->stop = 1;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->gate.mu);
        pthread_join(r->thread, NULL);
    }
    t->mesh.gate = NULL;
    pthread_mutex_destroy(&r->gate.mu);
    pthread_mutex_destroy(&r->upd_mu);
    pthread_cond_destroy(&r->cv);
    model_state_free(&r->prev);
    for (int j = 0; r->held && j < r->nb; j++)
        for (int v = 0; v < 2; v++) {
            model_arena_free(r->held[j].buf[v], 3 * r->x_n);
            free(r->held[j].sum[v]);
        }
    free(r->held);
    free(r->x_sum);
    free(r->x_scratch);
    free(r);
    t->mesh.rep = NULL;
}

/* ---- the step ---- */

int replica_checks(const struct trainer *t, long step) {
    int every = t->spec.mesh.check_every;
    if (every <= 0 || step <= 0) return 0;
    if (!t->mesh.outer) return step % every == 0;
    /* diloco: only an outer step's state is the same in every pod */
    int H = t->spec.mesh.outer_every;
    return step % H == 0 && (step / H) % every == 0;
}

void replica_step_begin(struct trainer *t) {
    struct replica *r = t->mesh.rep;
    long step = t->model.step;
    pthread_mutex_lock(&r->gate.mu);
    r->job_step = step;
    r->do_send = r->nb > 0;
    r->do_hash = replica_checks(t, step);
    r->hash_ready = 0;
    r->err.status = MOE_OK;
    r->pending = r->do_send || r->do_hash;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->gate.mu);
}

static moe_status wait_thread(struct replica *r) {
    pthread_mutex_lock(&r->gate.mu);
    while (r->pending || r->running) pthread_cond_wait(&r->cv, &r->gate.mu);
    moe_status s = thread_error_take(&r->err, "buddy copy: ");
    pthread_mutex_unlock(&r->gate.mu);
    return s;
}

moe_status replica_step_join(struct trainer *t) { return wait_thread(t->mesh.rep); }

void replica_step_abandon(struct trainer *t) {
    struct replica *r = t->mesh.rep;
    if (!r) return;
    atomic_store(&r->cut_short, 1);
    (void)wait_thread(r);
    atomic_store(&r->cut_short, 0);
}

static int own_copies(const struct replica *r, long live, long prev, struct state_copy *out,
                      int max);

/* Under the gate, before the update of a slot that keeps its previous version: what a fence
 * that comes while it runs answers (the copies once it is done: the update cannot fail). */
static void update_begins(struct replica *r) {
    long next = r->t->model.step + 1;
    pthread_mutex_lock(&r->upd_mu);
    r->upd_live = next;
    r->upd_n = own_copies(r, next, next - 1, r->upd_copies, REPLICA_MAX_COPIES);
    r->updating = 1;
    pthread_mutex_unlock(&r->upd_mu);
}

/* Under the gate, once the update is done: a fence that came meanwhile closes it now. */
static void update_ends(struct replica *r) {
    pthread_mutex_lock(&r->upd_mu);
    r->updating = 0;
    if (r->fence_late) r->gate.fenced = 1;
    r->fence_late = 0;
    pthread_mutex_unlock(&r->upd_mu);
}

moe_status replica_update(struct trainer *t, double norm) {
    struct replica *r = t->mesh.rep;
    pthread_mutex_lock(&r->gate.mu);
    if (r->gate.fenced) {
        pthread_mutex_unlock(&r->gate.mu);
        return moe_fail(MOE_EINTERNAL, "fenced by the coordinator before the update of step %ld",
                        t->model.step + 1);
    }
    if (r->keep_prev) {
        update_begins(r);
        model_update_into(&t->model, &r->prev, &t->spec.optimizer, norm);
        update_ends(r);
    } else {
        model_update_with_norm(&t->model, &t->spec.optimizer, norm);
    }
    pthread_mutex_unlock(&r->gate.mu);
    return MOE_OK;
}

int replica_hash(const struct trainer *t, uint8_t out[32], long *step) {
    struct replica *r = t->mesh.rep;
    if (!r || !r->hash_ready) return 0;
    memcpy(out, r->hash, 32);
    *step = r->hash_step;
    return 1;
}

/* ---- fence ---- */

static int add_copy(struct state_copy *out, int n, int max, int slot, long step) {
    for (int i = 0; i < n; i++)
        if (out[i].slot == slot && out[i].step == step) return n;
    if (n < max) out[n++] = (struct state_copy){slot, step, 0, {0}};
    return n;
}

static int own_version(struct replica *r, long step, real *arena[4], real **mom);

/* Whether this slot holds its own dense state at `step` (live or previous). */
static int holds_own(const struct replica *r, long step) {
    return (r->live_valid && r->t->model.step == step) ||
           (r->prev.step >= 0 && r->prev.step == step);
}

/* A repair's fence: the SHA-256 of the slot's own copies (live and previous), computed now,
 * so that a bit that flipped after the step's hash is seen too. Buddy copies hold experts
 * only: no whole state to hash. */
static void hash_own_copies(struct replica *r, struct state_copy *out, int n) {
    for (int i = 0; i < n; i++) {
        real *a[4], *mom;
        if (out[i].slot != r->s || !own_version(r, out[i].step, a, &mom)) continue;
        out[i].has_sha = hash_arenas(r, out[i].step, a, NULL, out[i].sha, NULL) == MOE_OK;
    }
}

/* The copies a slot that keeps its previous version holds with these live and previous steps
 * (-1: none): both, and the buddy copies of either step. */
static int own_copies(const struct replica *r, long live, long prev, struct state_copy *out,
                      int max) {
    int n = 0;
    if (live >= 0) n = add_copy(out, n, max, r->s, live);
    if (prev >= 0) n = add_copy(out, n, max, r->s, prev);
    for (int j = 0; j < r->nb; j++)
        for (int v = 0; v < 2; v++) {
            long st = r->held[j].step[v];
            if (st >= 0 && (st == live || st == prev))
                n = add_copy(out, n, max, r->held[j].slot, st);
        }
    return n;
}

/* A copy the fence may list: its own state, or a buddy copy that passes copy_checked. Under
 * upd_mu during an update: the update does not touch the held copies, and the slot goes on
 * (to anything that does) only once update_ends has taken upd_mu. */
static int listed_checked(struct replica *r, const struct state_copy *c) {
    if (c->slot == r->s) return 1;
    for (int j = 0; j < r->nb; j++)
        for (int v = 0; v < 2; v++)
            if (r->held[j].slot == c->slot && r->held[j].step[v] == c->step)
                return copy_checked(r, &r->held[j], v);
    return 0;
}

/* A fence during an update (which holds the gate for a pass over the whole state, tens of ms
 * under load): answered at once with the copies the slot holds when the update ends, which it
 * cannot fail to; the update closes the gate as it ends, so that no other starts. -1: no
 * update runs. */
static int fence_during_update(struct replica *r, struct state_copy *out, int max, long *live) {
    int n = -1;
    pthread_mutex_lock(&r->upd_mu);
    if (r->updating) {
        r->fence_late = 1;
        n = 0;
        for (int i = 0; i < r->upd_n && n < max; i++)
            if (listed_checked(r, &r->upd_copies[i])) out[n++] = r->upd_copies[i];
        *live = r->upd_live;
    }
    pthread_mutex_unlock(&r->upd_mu);
    return n;
}

int replica_fence(struct trainer *t, struct state_copy *out, int max, long *live, int hash) {
    struct replica *r = t->mesh.rep;
    if (!r) return 0;
    int early = hash ? -1 : fence_during_update(r, out, max, live); /* a repair hashes: waits */
    if (early >= 0) return early;
    pthread_mutex_lock(&r->gate.mu);
    r->gate.fenced = 1;
    int n = 0;
    *live = r->live_valid ? t->model.step : -1;
    if (t->mesh.outer) { /* diloco: only the outer steps' versions are another pod's too */
        long steps[2];
        int k = outer_copies(t, steps);
        for (int i = 0; i < k; i++) n = add_copy(out, n, max, r->s, steps[i]);
    }
    if (r->live_valid && !t->mesh.outer) n = add_copy(out, n, max, r->s, t->model.step);
    if (r->prev.step >= 0) n = add_copy(out, n, max, r->s, r->prev.step);
    for (int j = 0; j < r->nb; j++)
        for (int v = 0; v < 2; v++) {
            long st = r->held[j].step[v];
            if (st >= 0 && holds_own(r, st) && copy_checked(r, &r->held[j], v))
                n = add_copy(out, n, max, r->held[j].slot, st);
        }
    if (hash) hash_own_copies(r, out, n);
    pthread_mutex_unlock(&r->gate.mu);
    return n;
}

void replica_request_flip(struct trainer *t) {
    if (t->mesh.rep) atomic_store(&t->mesh.rep->flip, 1);
}

void replica_request_corrupt(struct trainer *t) {
    if (t->mesh.rep) atomic_store(&t->mesh.rep->corrupt, 1);
}

void replica_damage_copies(struct trainer *t) {
    struct replica *r = t->mesh.rep;
    if (!r) return;
    pthread_mutex_lock(&r->gate.mu);
    for (int j = 0; j < r->nb; j++)
        for (int v = 0; v < 2; v++)
            if (r->held[j].step[v] >= 0) ((unsigned char *)r->held[j].buf[v])[r->x_n] ^= 0x10;
    pthread_mutex_unlock(&r->gate.mu);
}

/* Applied only once the slot has trained a step since it (re)started: then the state it
 * restarted from has been compared across the pods (in that step's all-gather) and is held as
 * the previous version, which a repair returns to. A flip into a restored state whose step was
 * never compared has no agreed copy to return to (docs/recovery.md, "What a repair cannot
 * do"): chaos does not aim at that window, it waits out the first step. */
void replica_apply_flip(struct trainer *t) {
    struct replica *r = t->mesh.rep;
    if (!r || t->model.step <= r->since || !atomic_exchange(&r->flip, 0)) return;
    uint32_t bits;
    size_t i = t->model.n_params / 2; /* a dense weight every slot has */
    memcpy(&bits, &t->model.param_mem[i], sizeof bits);
    bits ^= 1u << 3; /* a low mantissa bit: training goes on, the hashes differ */
    memcpy(&t->model.param_mem[i], &bits, sizeof bits);
    LOG_WARN("chaos: flipped a bit of parameter %zu of slot (%d, %d)", i, t->mesh.pod,
             t->mesh.slot);
}

/* ---- restore ---- */

/* The arenas of this slot's own version at `step` (live or previous; with diloco an outer
 * version, *mom its outer momentum). */
static int own_version(struct replica *r, long step, real *arena[4], real **mom) {
    struct model *m = &r->t->model;
    *mom = NULL;
    if (r->t->mesh.outer) return outer_version(r->t, step, arena, mom);
    if (r->live_valid && m->step == step) {
        arena[0] = m->param_mem, arena[1] = m->m_mem, arena[2] = m->v_mem, arena[3] = m->buffer_mem;
        return 1;
    }
    if (r->prev.step == step) {
        arena[0] = r->prev.param_mem, arena[1] = r->prev.m_mem, arena[2] = r->prev.v_mem;
        arena[3] = r->prev.buffer_mem;
        return 1;
    }
    return 0;
}

int replica_own_state(struct trainer *t, long step, const real *arena[4], const real **carry) {
    struct replica *r = t->mesh.rep;
    if (!r) return 0;
    real *a[4], *mom;
    pthread_mutex_lock(&r->gate.mu);
    int ok = r->gate.fenced && own_version(r, step, a, &mom);
    pthread_mutex_unlock(&r->gate.mu);
    for (int i = 0; ok && i < 4; i++) arena[i] = a[i];
    if (ok) *carry = mom;
    return ok;
}

/* Every transfer of a slot's state is the same sequence: a header (step, slot index), then
 * for the parameters and both moments the three pieces around the experts (so that a buddy
 * can send its own dense part with its copy of the experts), then the buffers, these ten in
 * chunks over the lanes (transfer_lanes.h), then the CRC-32C of every block of every piece
 * (transfer_check.h), each computed before its block was sent. The receiver computes its own
 * as the chunks arrive and uses the state only once every block matches. */
struct state_header {
    int64_t step, slot;
};


static const char *const piece_names[STATE_PIECES] = {
    "parameters before the experts", "expert parameters", "parameters after the experts",
    "first moments before the experts", "expert first moments", "first moments after the experts",
    "second moments before the experts", "expert second moments",
    "second moments after the experts", "buffers", "outer momentum (and mean to apply)"};

/* The pieces in the order they go; returns how many checksums they have. */
static size_t state_pieces(const struct replica *r, real *const own[4], real *const experts[3],
                           real *mom, struct lane_piece pc[STATE_PIECES]) {
    const struct model *m = &r->t->model;
    size_t n = m->n_params, hi = r->x_lo + r->x_n, blocks = 0;
    for (int a = 0; a < 3; a++) {
        pc[3 * a] = (struct lane_piece){own[a], sizeof(real) * r->x_lo, NULL};
        pc[3 * a + 1] = (struct lane_piece){experts[a], sizeof(real) * r->x_n, NULL};
        pc[3 * a + 2] = (struct lane_piece){own[a] + hi, sizeof(real) * (n - hi), NULL};
    }
    pc[9] = (struct lane_piece){own[3], sizeof(real) * m->n_buffers, NULL};
    pc[10] = (struct lane_piece){mom, mom ? sizeof(real) * outer_carried(r->t) : 0, NULL};
    for (int i = 0; i < r->n_pieces; i++) blocks += transfer_blocks(pc[i].bytes);
    return blocks;
}

static size_t state_bytes(const struct replica *r) {
    const struct model *m = &r->t->model;
    size_t carry = r->t->mesh.outer ? outer_carried(r->t) : 0;
    return sizeof(real) * (3 * m->n_params + m->n_buffers + carry);
}

/* A buddy's copy of the experts keeps the checksums its sender made (so that damage to the
 * copy in this process's memory shows too); the rest are computed as the chunks go. */
static void sign_copy(const struct replica *r, struct lane_piece pc[STATE_PIECES],
                      const uint32_t *copy_sum) {
    for (int a = 0; copy_sum && a < 3; a++) pc[3 * a + 1].sum = copy_sum + a * r->xb;
}

/* Chaos "corrupt-transfer": a bit of the expert parameters flipped on their way out (after
 * its block's checksum was made: a buddy's copy keeps its sender's), and back once sent. */
static unsigned char *corrupt_byte(struct replica *r, int to, const struct lane_piece pc[]) {
    if (!atomic_exchange(&r->corrupt, 0) || !pc[1].bytes) return NULL;
    LOG_WARN("chaos: slot (%d, %d) sends rank %d a state with a flipped bit (%s, byte %zu)",
             r->t->mesh.pod, r->s, to, piece_names[1], pc[1].bytes / 2);
    return (unsigned char *)pc[1].p + pc[1].bytes / 2;
}

/* A buddy's copy of slot `slot`'s experts at `step` (its buffers and checksums), checked
 * (copy_checked: a fence listed it, so normally it was), or NULL. */
static const struct held *held_copy(struct replica *r, int slot, long step, int *v) {
    struct held *found = NULL;
    pthread_mutex_lock(&r->gate.mu);
    for (int j = 0; !found && j < r->nb; j++)
        for (int k = 0; !found && k < 2; k++)
            if (r->held[j].slot == slot && r->held[j].step[k] == step &&
                copy_checked(r, &r->held[j], k))
                found = &r->held[j], *v = k;
    pthread_mutex_unlock(&r->gate.mu);
    return found;
}

static moe_status send_state(struct replica *r, int to, int slot, long step, uint64_t *bytes) {
    struct comm *c = r->t->mesh.comm;
    const struct model *m = &r->t->model;
    real *own[4], *mom;
    if (!own_version(r, step, own, &mom))
        return moe_fail(MOE_EINVAL, "restore: asked to send step %ld, but this slot holds steps "
                        "%ld and %ld", step, m->step, r->prev.step);
    real *experts[3] = {own[0] + r->x_lo, own[1] + r->x_lo, own[2] + r->x_lo};
    const struct held *h = NULL;
    int v = 0;
    if (slot != r->s) { /* a buddy copy */
        if (!(h = held_copy(r, slot, step, &v)))
            return moe_fail(MOE_EINVAL, "restore: asked to send slot %d at step %ld, but holds "
                            "no copy of it (or none that passed its checksums)", slot, step);
        for (int a = 0; a < 3; a++) experts[a] = h->buf[v] + (size_t)a * r->x_n;
    }
    struct lane_piece pc[STATE_PIECES];
    size_t n_sum = state_pieces(r, own, experts, mom, pc);
    uint32_t *sum = calloc(n_sum + 1, sizeof *sum);
    if (!sum) return moe_fail(MOE_ENOMEM, "out of memory for %zu checksums", n_sum);
    sign_copy(r, pc, h ? h->sum[v] : NULL);
    struct state_header hd = {step, slot};
    moe_status s = comm_send(c, CH_MAIN, to, &hd, sizeof hd);
    if (s == MOE_OK)
        s = transfer_lanes_send(c, to, pc, r->n_pieces, sum, corrupt_byte(r, to, pc));
    if (s == MOE_OK) s = comm_send(c, CH_MAIN, to, sum, sizeof *sum * n_sum);
    free(sum);
    CHECK(s);
    *bytes += sizeof hd + state_bytes(r) + sizeof *sum * n_sum;
    return MOE_OK;
}

/* The received pieces against the sender's checksums: MOE_OK, or the refusal, naming the
 * first block that differs (st->refused_from: the sender). */
static moe_status check_pieces(const struct replica *r, const struct lane_piece pc[STATE_PIECES],
                               const uint32_t *sum, const uint32_t *got, int from, long step,
                               struct restore_stats *st) {
    for (int i = 0; i < r->n_pieces; i++) {
        size_t b = 0, n = transfer_blocks(pc[i].bytes);
        while (b < n && got[b] == sum[b]) b++;
        if (b < n) {
            st->refused_from = from;
            return moe_fail(MOE_EINTERNAL, "the state of slot (%d, %d) at step %ld from rank %d "
                            "failed its checksum: %s, block %ld of %zu (from byte %zu): CRC-32C "
                            "%08x, the sender's %08x; refused", r->t->mesh.pod, r->s, step, from,
                            piece_names[i], (long)b, n, b * TRANSFER_BLOCK_BYTES, got[b],
                            sum[b]);
        }
        sum += n;
        got += n;
    }
    return MOE_OK;
}

static moe_status recv_state(struct replica *r, int from, long step, struct restore_stats *st) {
    struct comm *c = r->t->mesh.comm;
    struct model *m = &r->t->model;
    struct state_header hd;
    pthread_mutex_lock(&r->gate.mu);
    r->live_valid = 0; /* until every byte is in and checked: a fence now lists no live copy */
    real *mom = r->t->mesh.outer ? outer_incoming_momentum(r->t) : NULL; /* nor outer one */
    pthread_mutex_unlock(&r->gate.mu);
    CHECK(comm_recv(c, CH_MAIN, from, &hd, sizeof hd));
    if (hd.step != step || hd.slot != r->s)
        return moe_fail(MOE_EINVAL, "restore: rank %d sent slot %lld at step %lld, expected "
                        "slot %d at step %ld", from, (long long)hd.slot, (long long)hd.step,
                        r->s, step);
    real *own[4] = {m->param_mem, m->m_mem, m->v_mem, m->buffer_mem};
    real *experts[3] = {own[0] + r->x_lo, own[1] + r->x_lo, own[2] + r->x_lo};
    struct lane_piece pc[STATE_PIECES];
    size_t n_sum = state_pieces(r, own, experts, mom, pc);
    uint32_t *sum = calloc(2 * n_sum + 1, sizeof *sum);
    if (!sum) return moe_fail(MOE_ENOMEM, "out of memory for %zu checksums", n_sum);
    moe_status s = transfer_lanes_recv(c, from, pc, r->n_pieces, sum + n_sum);
    if (s == MOE_OK) s = comm_recv(c, CH_MAIN, from, sum, sizeof *sum * n_sum);
    if (s == MOE_OK) s = check_pieces(r, pc, sum, sum + n_sum, from, step, st);
    free(sum);
    CHECK(s);
    pthread_mutex_lock(&r->gate.mu);
    m->step = step;
    r->live_valid = 1;
    if (r->t->mesh.outer) outer_adopt(r->t);
    pthread_mutex_unlock(&r->gate.mu);
    st->bytes_received += sizeof hd + state_bytes(r) + sizeof *sum * n_sum;
    return MOE_OK;
}

/* This slot's own part of the plan: its live state becomes S(step). */
static moe_status return_to(struct replica *r, long step) {
    struct model *m = &r->t->model;
    if (r->t->mesh.outer) { /* diloco: to an outer step, replaying the inner steps after it */
        CHECK(outer_return(r->t, step));
        r->live_valid = 1;
        return MOE_OK;
    }
    if (r->live_valid && m->step == step) return MOE_OK;
    if (r->prev.step == step) { /* one step back: the previous version becomes live */
        model_state_swap(m, &r->prev);
        r->live_valid = 1;
        return MOE_OK;
    }
    if (step == 0) { /* the initial state is a function of the seed */
        model_init(m, r->t->spec.run.seed);
        r->live_valid = 1;
        return MOE_OK;
    }
    return moe_fail(MOE_EINVAL, "restore: the plan says this slot holds its state at step %ld, "
                    "but it holds steps %ld and %ld", step, r->live_valid ? m->step : -1,
                    r->prev.step);
}

moe_status replica_restore(struct trainer *t, const struct restore_plan *p,
                           struct restore_stats *st) {
    struct replica *r = t->mesh.rep;
    struct comm *c = t->mesh.comm;
    int me = comm_rank(c), n = comm_size(c);
    memset(st, 0, sizeof *st);
    st->refused_from = -1;
    if (p->n != n)
        return moe_fail(MOE_EINVAL, "restore: the plan has %d sources for %d ranks", p->n, n);
    double t0 = moe_clock_s();
    (void)wait_thread(r); /* the last epoch's copy, if it was still running */
    pthread_mutex_lock(&r->gate.mu);
    if (p->from[me] < 0) {
        moe_status s = return_to(r, p->step);
        if (s != MOE_OK) {
            pthread_mutex_unlock(&r->gate.mu);
            return s;
        }
    }
    pthread_mutex_unlock(&r->gate.mu);
    /* the transfers in the order of their targets: each rank takes its part in turn, so no
     * two synchronous sends wait for each other */
    for (int k = 0; k < n; k++) {
        int from = p->from[k];
        if (from < 0) continue;
        if (from >= n || from == k)
            return moe_fail(MOE_EINVAL, "restore: rank %d's source %d is not another rank", k,
                            from);
        if (me == from) CHECK(send_state(r, k, k % r->S, p->step, &st->bytes_sent));
        if (me == k) CHECK(recv_state(r, from, p->step, st));
    }
    /* every slot is at `step` now: buddies start over, and of the other versions only S(step - 1)
     * stays, where the slot held it (it returned to its own live state): a bit that flips in
     * S(step), which no check compared before the fence, is then repaired from step - 1
     * (docs/recovery.md, "Repair"); a new holder pulls it from another pod if needed */
    pthread_mutex_lock(&r->gate.mu);
    if (r->prev.step != p->step - 1) r->prev.step = -1;
    r->since = p->step;
    for (int j = 0; j < r->nb; j++) r->held[j].step[0] = r->held[j].step[1] = -1;
    pthread_mutex_unlock(&r->gate.mu);
    r->x_summed = 0; /* the thread's last hash was not of this state */
    if (r->nb > 0) CHECK(send_copies(r, p->step));
    struct comm_group all;
    comm_group_all(&all, c);
    CHECK(comm_barrier(c, CH_MAIN, &all));
    pthread_mutex_lock(&r->gate.mu);
    r->gate.fenced = 0;
    pthread_mutex_unlock(&r->gate.mu);
    st->transfer_s = moe_clock_s() - t0;
    LOG_INFO("slot (%d, %d): restored to step %ld in %.3f s (received %.1f MB, sent %.1f MB)",
             t->mesh.pod, t->mesh.slot, p->step, st->transfer_s, st->bytes_received / 1e6,
             st->bytes_sent / 1e6);
    return MOE_OK;
}
