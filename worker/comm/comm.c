/*
 * comm.c — the life of a comm: opening (validating the config, reading the tunables, joining
 * MPI, connecting the tcp links), aborting, cutting, closing; groups; statistics.
 *
 * Owns: the rule that comm_abort from any thread wakes every pending operation (a byte on a
 * pipe that every poll() watches), and that closing frees what opening made, whatever state
 * a failed open or a broken comm left.
 * Never: moves payload (engine.c does) or interprets it (collectives.c does), and is called
 * by no other file of worker/comm: it is the top layer.
 */
#include "handshake.h"
#include "transport.h"
#include "../../common/clock.h"
#include "../../common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static moe_status check_config(const struct comm_config *cfg) {
    if (cfg->backend != COMM_TCP && cfg->backend != COMM_MPI)
        return moe_fail(MOE_EINVAL, "comm: unknown backend %d", (int)cfg->backend);
    if (cfg->pods < 1 || cfg->slots < 1 || cfg->size != cfg->pods * cfg->slots ||
        cfg->size > COMM_MAX_RANKS)
        return moe_fail(MOE_EINVAL, "comm: size %d is not pods %d x slots %d (at most %d ranks)",
                        cfg->size, cfg->pods, cfg->slots, COMM_MAX_RANKS);
    if (cfg->rank < 0 || cfg->rank >= cfg->size)
        return moe_fail(MOE_EINVAL, "comm: rank %d outside a %d-rank comm", cfg->rank, cfg->size);
    if (!(cfg->timeout_s > 0) || cfg->timeout_s > 86400)
        return moe_fail(MOE_EINVAL, "comm: timeout_s %g must be in (0, 86400]", cfg->timeout_s);
    if (!cfg->job_id || !cfg->job_id[0] || strlen(cfg->job_id) >= 128)
        return moe_fail(MOE_EINVAL, "comm: job_id must have 1 to 127 characters");
    if (!cfg->key) return moe_fail(MOE_EINVAL, "comm: no data-plane key");
    return MOE_OK;
}

moe_status comm_open(struct comm **out, const struct comm_config *cfg, struct comm_listener *l) {
    *out = NULL;
    CHECK(check_config(cfg));
    const struct comm_tunables *tun = comm_tunables();
    if (!tun) return MOE_EINVAL;
    moe_status res = MOE_OK;
    struct comm *c = calloc(1, sizeof *c);
    if (!c) return moe_fail(MOE_ENOMEM, "comm: out of memory");
    c->abort_pipe[0] = c->abort_pipe[1] = -1;
    pthread_mutex_init(&c->broken_mu, NULL);
    c->rank = cfg->rank, c->size = cfg->size, c->pods = cfg->pods, c->slots = cfg->slots;
    c->timeout_s = cfg->timeout_s;
    c->open_deadline = moe_clock_s() + 5 * cfg->timeout_s;
    c->backend = cfg->backend;
    c->epoch = cfg->epoch;
    c->encrypt = cfg->encrypt || tun->encrypt;
    c->tun = tun;
    snprintf(c->job_id, sizeof c->job_id, "%s", cfg->job_id);
    c->peers = calloc((size_t)c->size, sizeof *c->peers);
    if (!c->peers) {
        res = moe_fail(MOE_ENOMEM, "comm: out of memory for %d peers", c->size);
        goto fail;
    }
    for (int q = 0; q < c->size; q++) {
        c->peers[q].mpi_rank = -1;
        for (int ch = 0; ch < COMM_CHANNELS; ch++) c->peers[q].ch[ch].fd = -1;
    }
    if (pipe(c->abort_pipe) != 0 || fcntl(c->abort_pipe[1], F_SETFL, O_NONBLOCK) != 0 ||
        fcntl(c->abort_pipe[0], F_SETFD, FD_CLOEXEC) != 0 ||
        fcntl(c->abort_pipe[1], F_SETFD, FD_CLOEXEC) != 0) {
        res = moe_fail(MOE_EIO, "comm: pipe: %s", strerror(errno));
        goto fail;
    }
    if (c->backend == COMM_MPI) CHECK_GOTO(comm_mpi_open(c), res, fail);
    CHECK_GOTO(comm_connect_all(c, cfg, l), res, fail);
    CHECK_GOTO(comm_watch_start(c, cfg->on_peer_lost, cfg->on_peer_lost_arg), res, fail);
    LOG_DEBUG("comm: rank %d of %d open (job %s, epoch %llu, %d peers through shared memory, "
              "%d through encrypted tcp)", c->rank, c->size, c->job_id,
              (unsigned long long)c->epoch, comm_shm_peers(c), comm_encrypted_peers(c));
    *out = c;
    return MOE_OK;
fail:
    comm_close(c);
    return res;
}

void comm_abort(struct comm *c) {
    if (!c) return;
    atomic_store(&c->aborted, 1);
    static const char one = 1;
    /* Never read: the pipe stays readable, so every later poll() returns at once too. */
    if (write(c->abort_pipe[1], &one, 1) < 0 && errno != EAGAIN)
        LOG_WARN("comm: abort pipe: %s", strerror(errno));
}

void comm_close(struct comm *c) {
    if (!c) return;
    if (c->watch) { /* the watcher sleeps on the sockets closed below: wake it, then join */
        comm_abort(c);
        comm_watch_stop(c);
    }
    if (c->peers) {
        for (int q = 0; q < c->size; q++)
            for (int ch = 0; ch < COMM_CHANNELS; ch++) {
                struct link *k = &c->peers[q].ch[ch];
                if (k->fd >= 0) close(k->fd);
                shm_ring_close(k->tx);
                shm_ring_close(k->rx);
                seal_free(k->seal);
            }
    }
    comm_mpi_close(c);
    for (int i = 0; i < 2; i++)
        if (c->abort_pipe[i] >= 0) close(c->abort_pipe[i]);
    for (int ch = 0; ch < COMM_CHANNELS; ch++) free(c->scratch[ch]);
    pthread_mutex_destroy(&c->broken_mu);
    free(c->peers);
    free(c);
}

int comm_cut(struct comm *c, int peer) {
    int n = 0;
    for (int q = 0; c && c->peers && q < c->size; q++) {
        if (q == c->rank || (peer >= 0 && q != peer)) continue;
        for (int ch = 0; ch < COMM_CHANNELS; ch++) {
            int fd = c->peers[q].ch[ch].fd; /* shutdown, not close: another thread may poll it */
            if (fd >= 0 && shutdown(fd, SHUT_RDWR) == 0) n++;
        }
    }
    return n;
}

int comm_rank(const struct comm *c) { return c->rank; }
int comm_size(const struct comm *c) { return c->size; }

/* The n ranks first, first + stride, ...: a pod's slots (stride 1) or a slot's pods. */
static void group_of(struct comm_group *g, const struct comm *c, int n, int first, int stride) {
    g->n = n;
    g->me = -1;
    for (int i = 0; i < n; i++) {
        g->ranks[i] = first + i * stride;
        if (g->ranks[i] == c->rank) g->me = i;
    }
}

void comm_group_pod(struct comm_group *g, const struct comm *c, int pod) {
    group_of(g, c, c->slots, pod * c->slots, 1);
}

void comm_group_slot(struct comm_group *g, const struct comm *c, int slot) {
    group_of(g, c, c->pods, slot, c->slots);
}

void comm_group_all(struct comm_group *g, const struct comm *c) {
    group_of(g, c, c->size, 0, 1);
}

int comm_ops_in_flight(const struct comm *c) {
    return atomic_load(&((struct comm *)c)->in_flight); // read, never changed, here
}

int comm_shm_peers(const struct comm *c) {
    int n = 0;
    for (int q = 0; q < c->size; q++) n += c->peers[q].ch[0].tx != NULL;
    return n;
}

const char *comm_peer_transport(const struct comm *c, int rank) {
    if (rank < 0 || rank >= c->size || rank == c->rank) return NULL;
    const struct peer *p = &c->peers[rank];
    if (p->mpi_rank >= 0) return "mpi";
    return p->ch[0].tx ? "shm" : "tcp";
}

int comm_encrypted_peers(const struct comm *c) {
    int n = 0;
    for (int q = 0; q < c->size; q++) n += c->peers[q].ch[0].seal != NULL;
    return n;
}

void comm_get_stats(const struct comm *c, struct comm_stats *s) {
    struct comm *m = (struct comm *)c; // atomics are read, never changed, here
    s->alltoall_bytes = atomic_load(&m->stats[STAT_ALLTOALL]);
    s->reduce_bytes = atomic_load(&m->stats[STAT_REDUCE]);
    s->other_bytes = atomic_load(&m->stats[STAT_OTHER]);
}
