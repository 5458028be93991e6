/*
 * handshake.c — connecting the tcp links of a comm and proving, on each, that both ends hold
 * the cluster token and belong to the same job and epoch.
 *
 * Owns: who connects to whom (the lower rank connects to the higher, one connection per
 * channel), the handshake messages (docs/dataplane.md), the refusal rules, and the setting
 * up of shared-memory rings for peers on the same host.
 * Never: sends the token (only HMAC-SHA256 values over both nonces and the whole
 * transcript), blocks (every socket is nonblocking and polled against a deadline), or lets
 * an unauthenticated connection become a link. A connection that does not finish its
 * handshake within timeout_s, or speaks garbage, is closed and forgotten.
 */
#include "handshake.h"
#include "transport.h"
#include "../../common/clock.h"
#include "../../common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HS_MAGIC "MOEDCOMM"
#define HS_VERSION 1u

enum hs_verdict {
    HS_OK = 0,
    HS_VERSION_DIFFERS = 1,
    HS_JOB_DIFFERS = 2,
    HS_EPOCH_DIFFERS = 3,
    HS_NOT_ME = 4,   // the connector thinks we are another rank, or the comm sizes differ
    HS_DUPLICATE = 5,
    HS_TOKEN_DIFFERS = 6,
};

struct hs_hello { // connector -> acceptor
    char magic[8];
    uint32_t version;
    uint32_t from, to, channel, size;
    uint32_t shm; // connector can share memory
    uint64_t epoch;
    char job[128];
    uint8_t host[32]; // hash of hostname, boot id and namespaces: equal = shm may work
    uint8_t nonce[32];
};
struct hs_reply { // acceptor -> connector
    char magic[8];
    uint32_t verdict;
    uint32_t shm; // both ends on one host and capable
    uint64_t epoch;
    char job[128];
    uint8_t nonce[32];
    uint8_t mac[32]; // HMAC(token, "acceptor" | hello | reply up to mac)
};
struct hs_finish { // connector -> acceptor
    uint32_t verdict; // HS_OK, or HS_TOKEN_DIFFERS when the acceptor's mac was wrong
    uint32_t shm;     // rings created, names below
    char ring_c2a[64], ring_a2c[64];
    uint32_t pid;                      // cma probe: the acceptor tries to read
    uint64_t probe_addr, probe_value;  // probe_value at probe_addr in process pid
    uint8_t mac[32]; // HMAC(token, "connector" | hello | reply | finish up to mac)
};
struct hs_final { // acceptor -> connector
    uint32_t verdict;
    uint32_t shm;    // the acceptor mapped both rings: the link uses them
    uint32_t cma_ok; // the acceptor could read the connector's probe
    uint32_t pid;
    uint64_t probe_addr, probe_value; // the connector's turn to try
    uint8_t mac[32]; // HMAC(token, "final" | hello | reply | final up to mac)
};
struct hs_confirm { // connector -> acceptor
    uint32_t cma;    // both could read each other: large payloads go by descriptor
};

enum hs_phase { PH_CONNECT, PH_RETRY, PH_IO, PH_DONE, PH_DEAD };
/* The message each step of a connection is sending or waiting for. */
enum hs_step {
    ST_SEND_HELLO, ST_RECV_REPLY, ST_SEND_FINISH, ST_RECV_FINAL, ST_SEND_CONFIRM, // connector
    ST_RECV_HELLO, ST_SEND_REPLY, ST_RECV_FINISH, ST_SEND_FINAL, ST_RECV_CONFIRM, // acceptor
    ST_SEND_REFUSAL
};

struct hs {
    int fd;
    bool outgoing;
    int peer, channel; // for incoming, known once the hello is in
    enum hs_phase phase;
    enum hs_step step;
    uint8_t buf[512];
    size_t len, off;
    double deadline, retry_at;
    struct hs_hello hello;
    struct hs_reply reply;
    struct hs_finish finish;
    struct hs_final final;
    struct hs_confirm confirm;
    struct shm_ring *tx, *rx;
    bool cma;
};

/* One comm_open's connections: those we dial, those we accepted, and what they taught us. */
struct hs_ctx {
    struct comm *c;
    const struct comm_config *cfg;
    struct comm_listener *l; // NULL when no lower rank dials us
    uint8_t host[32];
    bool shm_capable;        // MOE_COMM_SHM
    char refused[256]; // the last connection we refused without failing (stale epoch)
    char behind[256];  // the last peer that answered from an older epoch (we dial again)
    bool peer_behind[COMM_MAX_RANKS]; // it answered so: its resets are its old comm closing
    int expect_in, nout;     // connections to accept, and to dial
    struct hs *hs;           // (cap) every connection in progress
    int nh, cap;             // room for the expected ones plus strangers
    struct pollfd *pf;       // (cap + 1) this round's poll set
    int *pf_of;              // (cap + 1) the connection of each pollfd (-1: the listener)
};

static void host_identity(uint8_t out[32]) {
    char id[1024] = "";
    size_t n = 0;
    gethostname(id, 256);
    n = strlen(id);
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        n += fread(id + n, 1, 64, f);
        fclose(f);
    }
    const char *ns[] = {"/proc/self/ns/ipc", "/proc/self/ns/mnt"};
    for (int i = 0; i < 2; i++) {
        ssize_t k = readlink(ns[i], id + n, 100);
        if (k > 0) n += (size_t)k;
    }
    SHA256((const unsigned char *)id, n, out);
}

static void mac_of(const char *token, const char *role, const void *a, size_t alen,
                   const void *b, size_t blen, const void *c2, size_t clen, uint8_t out[32]) {
    uint8_t msg[1024];
    size_t n = 0, rl = strlen(role);
    memcpy(msg + n, role, rl), n += rl;
    memcpy(msg + n, a, alen), n += alen;
    memcpy(msg + n, b, blen), n += blen;
    if (clen) memcpy(msg + n, c2, clen), n += clen;
    unsigned int ol = 32;
    HMAC(EVP_sha256(), token, (int)strlen(token), msg, n, out, &ol);
}

static void start_io(struct hs *h, enum hs_step step, const void *msg, size_t len) {
    h->phase = PH_IO;
    h->step = step;
    h->off = 0;
    h->len = len;
    if (msg) memcpy(h->buf, msg, len);
}

static bool step_is_send(enum hs_step s) {
    return s == ST_SEND_HELLO || s == ST_SEND_FINISH || s == ST_SEND_REPLY ||
           s == ST_SEND_FINAL || s == ST_SEND_REFUSAL || s == ST_SEND_CONFIRM;
}

static void hs_drop(struct hs *h) {
    if (h->fd >= 0) close(h->fd);
    h->fd = -1;
    shm_ring_close(h->tx);
    shm_ring_close(h->rx);
    h->tx = h->rx = NULL;
    h->phase = PH_DEAD;
}

/* An outgoing connection to dial again shortly: the peer's listener is not up yet, or is still
 * serving the peer's older epoch (it takes ours once its worker hears of it). */
static void redial(struct hs *h) {
    hs_drop(h);
    h->phase = PH_RETRY;
    h->retry_at = moe_clock_s() + 0.02;
}

static moe_status start_connect(struct hs_ctx *x, struct hs *h) {
    const char *addr = x->cfg->peers[h->peer];
    char host[COMM_ADDR_MAX], port_s[16];
    int port;
    CHECK(tcp_parse_address(addr, host, sizeof host, &port));
    snprintf(port_s, sizeof port_s, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int gai = getaddrinfo(host, port_s, &hints, &ai);
    if (gai != 0)
        return moe_fail(MOE_EUNAVAILABLE, "comm: rank %d's address \"%s\": %s", h->peer, addr,
                        gai_strerror(gai));
    h->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (h->fd < 0) {
        freeaddrinfo(ai);
        return moe_fail(MOE_EIO, "comm: socket: %s", strerror(errno));
    }
    int r = connect(h->fd, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    if (r != 0 && errno != EINPROGRESS) {
        if (errno == ECONNREFUSED) { // its listener is not up yet: try again shortly
            redial(h);
            return MOE_OK;
        }
        return moe_fail(MOE_EUNAVAILABLE, "comm: connecting to rank %d at %s: %s", h->peer, addr,
                        strerror(errno));
    }
    h->phase = PH_CONNECT;
    return MOE_OK;
}

static void make_hello(struct hs_ctx *x, struct hs *h) {
    struct hs_hello *m = &h->hello;
    memset(m, 0, sizeof *m);
    memcpy(m->magic, HS_MAGIC, 8);
    m->version = HS_VERSION;
    m->from = (uint32_t)x->c->rank;
    m->to = (uint32_t)h->peer;
    m->channel = (uint32_t)h->channel;
    m->size = (uint32_t)x->c->size;
    m->shm = x->shm_capable;
    m->epoch = x->c->epoch;
    snprintf(m->job, sizeof m->job, "%s", x->c->job_id);
    memcpy(m->host, x->host, 32);
    RAND_bytes(m->nonce, 32);
}

/* An acceptor's verdict on a hello: which difference, if any, refuses it. */
static enum hs_verdict judge_hello(struct hs_ctx *x, const struct hs_hello *m) {
    struct comm *c = x->c;
    if (memcmp(m->magic, HS_MAGIC, 8) != 0) return HS_VERSION_DIFFERS;
    if (m->version != HS_VERSION) return HS_VERSION_DIFFERS;
    if (strncmp(m->job, c->job_id, sizeof m->job) != 0) return HS_JOB_DIFFERS;
    if (m->epoch != c->epoch) return HS_EPOCH_DIFFERS;
    if (m->to != (uint32_t)c->rank || m->size != (uint32_t)c->size ||
        m->from >= (uint32_t)c->rank || m->channel >= COMM_CHANNELS ||
        c->peers[m->from].mpi_rank >= 0)
        return HS_NOT_ME;
    if (c->peers[m->from].ch[m->channel].fd >= 0) return HS_DUPLICATE;
    return HS_OK;
}

static moe_status refusal_error(struct hs_ctx *x, int peer, enum hs_verdict v,
                                const char *their_job, uint64_t their_epoch, bool we_refused) {
    struct comm *c = x->c;
    const char *who = we_refused ? "refused rank" : "rank";
    switch (v) {
    case HS_JOB_DIFFERS:
        return moe_fail(MOE_EAUTH, "comm: %s %d: it is in job \"%.100s\", we are in job \"%s\"",
                        who, peer, their_job, c->job_id);
    case HS_EPOCH_DIFFERS:
        return moe_fail(MOE_EAUTH, "comm: %s %d: it is in epoch %llu, we are in epoch %llu", who,
                        peer, (unsigned long long)their_epoch, (unsigned long long)c->epoch);
    case HS_TOKEN_DIFFERS:
        return moe_fail(MOE_EAUTH, "comm: %s %d: the cluster tokens differ (HMAC mismatch)", who,
                        peer);
    case HS_NOT_ME:
        return moe_fail(MOE_EAUTH,
                        "comm: %s %d: it expected another rank or comm size (we are rank %d of "
                        "%d)",
                        who, peer, c->rank, c->size);
    case HS_VERSION_DIFFERS:
        return moe_fail(MOE_EAUTH, "comm: %s %d: handshake version differs", who, peer);
    case HS_DUPLICATE:
        return moe_fail(MOE_EAUTH, "comm: %s %d: duplicate connection", who, peer);
    case HS_OK: break;
    }
    return moe_fail(MOE_EINTERNAL, "comm: refusal without a reason from rank %d", peer);
}

/* The connector, for FINISH: creates the pair's two rings (or falls back to tcp when it
 * cannot) and, when cma is on, the probe the acceptor will try to read. */
static void offer_rings(struct hs_ctx *x, struct hs *h) {
    struct hs_finish *f = &h->finish;
    size_t cap = (size_t)x->c->tun->shm_ring_mb << 20;
    h->tx = shm_ring_create(cap, f->ring_c2a, sizeof f->ring_c2a);
    h->rx = h->tx ? shm_ring_create(cap, f->ring_a2c, sizeof f->ring_a2c) : NULL;
    if (!h->rx) {
        shm_ring_close(h->tx);
        h->tx = NULL;
        memset(f->ring_c2a, 0, sizeof f->ring_c2a);
        LOG_WARN("comm: no shared memory with rank %d (%s); using tcp", h->peer, moe_errmsg());
    }
    f->shm = h->rx != NULL;
    if (f->shm && x->c->tun->cma) {
        f->pid = (uint32_t)getpid();
        cma_probe_of_self(&f->probe_addr, &f->probe_value);
    }
}

/* The acceptor, for FINAL: maps the rings the connector offered (or falls back to tcp),
 * tries to read the connector's probe, and offers its own. */
static void map_rings(struct hs_ctx *x, struct hs *h) {
    struct hs_finish *f = &h->finish;
    h->rx = shm_ring_attach(f->ring_c2a);
    h->tx = h->rx ? shm_ring_attach(f->ring_a2c) : NULL;
    if (!h->tx) {
        LOG_WARN("comm: cannot map rank %d's shared memory (%s); using tcp", h->peer,
                 moe_errmsg());
        shm_ring_close(h->rx);
        h->rx = NULL;
    }
    h->final.shm = h->tx != NULL;
    if (h->final.shm && x->c->tun->cma) {
        h->final.cma_ok = cma_probe_peer((int)f->pid, f->probe_addr, f->probe_value);
        h->final.pid = (uint32_t)getpid();
        cma_probe_of_self(&h->final.probe_addr, &h->final.probe_value);
    }
}

/* The connector, REPLY in: the acceptor's verdict and proof. A peer still in an older epoch
 * is dialled again; a wrong proof is answered (so both ends report the same cause) before
 * failing. */
static moe_status got_reply(struct hs_ctx *x, struct hs *h) {
    memcpy(&h->reply, h->buf, sizeof h->reply);
    struct hs_reply *r = &h->reply;
    r->job[sizeof r->job - 1] = 0;
    if (memcmp(r->magic, HS_MAGIC, 8) != 0)
        return moe_fail(MOE_EAUTH, "comm: rank %d at %s does not speak the moed handshake",
                        h->peer, x->cfg->peers[h->peer]);
    if (r->verdict == HS_EPOCH_DIFFERS && r->epoch < x->c->epoch) {
        /* The peer has not taken our epoch yet (a recovery's RunSlot reaches the workers
         * one by one): not a fault, so dial again until the open's deadline. */
        refusal_error(x, h->peer, (enum hs_verdict)r->verdict, r->job, r->epoch, false);
        snprintf(x->behind, sizeof x->behind, "%s", moe_errmsg());
        x->peer_behind[h->peer] = true;
        redial(h);
        return MOE_OK;
    }
    if (r->verdict != HS_OK)
        return refusal_error(x, h->peer, (enum hs_verdict)r->verdict, r->job, r->epoch, false);
    uint8_t want[32];
    mac_of(x->cfg->token, "acceptor", &h->hello, sizeof h->hello, r,
           offsetof(struct hs_reply, mac), NULL, 0, want);
    struct hs_finish *f = &h->finish;
    memset(f, 0, sizeof *f);
    if (CRYPTO_memcmp(want, r->mac, 32) != 0) {
        f->verdict = HS_TOKEN_DIFFERS; // tell it, so both ends report the same cause
        start_io(h, ST_SEND_FINISH, f, sizeof *f);
        return MOE_OK;
    }
    if (r->shm && x->shm_capable) offer_rings(x, h);
    mac_of(x->cfg->token, "connector", &h->hello, sizeof h->hello, r, sizeof *r, f,
           offsetof(struct hs_finish, mac), f->mac);
    start_io(h, ST_SEND_FINISH, f, sizeof *f);
    return MOE_OK;
}

/* FINISH or FINAL has left: if it told the peer its proof was wrong, that fails the open;
 * otherwise wait for the next message. */
static moe_status sent_proof(struct hs *h, uint32_t verdict, enum hs_step next, size_t len) {
    if (verdict == HS_TOKEN_DIFFERS)
        return moe_fail(MOE_EAUTH,
                        "comm: rank %d proved a different cluster token (HMAC mismatch)",
                        h->peer);
    start_io(h, next, NULL, len);
    return MOE_OK;
}

/* The connector, FINAL in: the acceptor's proof over the whole transcript, whether it mapped
 * the rings, and whether it could read our memory; we try to read its memory in turn. */
static moe_status got_final(struct hs_ctx *x, struct hs *h) {
    memcpy(&h->final, h->buf, sizeof h->final);
    struct hs_final *fi = &h->final;
    if (fi->verdict != HS_OK)
        return refusal_error(x, h->peer, (enum hs_verdict)fi->verdict, "", 0, false);
    uint8_t want[32];
    mac_of(x->cfg->token, "final", &h->hello, sizeof h->hello, &h->reply, sizeof h->reply, fi,
           offsetof(struct hs_final, mac), want);
    if (CRYPTO_memcmp(want, fi->mac, 32) != 0)
        return moe_fail(MOE_EAUTH, "comm: rank %d's last handshake message is not "
                        "authentic", h->peer);
    if (!fi->shm) {
        shm_ring_close(h->tx);
        shm_ring_close(h->rx);
        h->tx = h->rx = NULL;
    }
    h->cma = h->tx && fi->cma_ok && h->finish.pid &&
             cma_probe_peer((int)fi->pid, fi->probe_addr, fi->probe_value);
    h->confirm.cma = h->cma;
    start_io(h, ST_SEND_CONFIRM, &h->confirm, sizeof h->confirm);
    return MOE_OK;
}

/* The acceptor, HELLO in: judge it and answer (REPLY, or the refusal that says why). A
 * stranger that does not speak the handshake is dropped. */
static moe_status got_hello(struct hs_ctx *x, struct hs *h) {
    struct comm *c = x->c;
    memcpy(&h->hello, h->buf, sizeof h->hello);
    struct hs_hello *m = &h->hello;
    m->job[sizeof m->job - 1] = 0;
    if (memcmp(m->magic, HS_MAGIC, 8) != 0) {
        LOG_WARN("comm: dropped a connection that does not speak the moed handshake");
        hs_drop(h);
        return MOE_OK;
    }
    enum hs_verdict v = judge_hello(x, m);
    h->peer = (int)m->from;
    h->channel = (int)m->channel;
    struct hs_reply *r = &h->reply;
    memset(r, 0, sizeof *r);
    memcpy(r->magic, HS_MAGIC, 8);
    r->verdict = v;
    r->epoch = c->epoch;
    snprintf(r->job, sizeof r->job, "%s", c->job_id);
    RAND_bytes(r->nonce, 32);
    r->shm = v == HS_OK && m->shm && x->shm_capable && memcmp(m->host, x->host, 32) == 0;
    mac_of(x->cfg->token, "acceptor", m, sizeof *m, r, offsetof(struct hs_reply, mac), NULL, 0,
           r->mac);
    start_io(h, v == HS_OK ? ST_SEND_REPLY : ST_SEND_REFUSAL, r, sizeof *r);
    return MOE_OK;
}

/* The acceptor's refusal has left: an older epoch is a fenced worker still trying, and
 * refusing it must not stop the new epoch from forming (nor must a duplicate or another
 * version); everything else is a misconfiguration worth failing for. */
static moe_status sent_refusal(struct hs_ctx *x, struct hs *h) {
    struct hs_hello *m = &h->hello;
    enum hs_verdict v = (enum hs_verdict)h->reply.verdict;
    if ((v == HS_EPOCH_DIFFERS && m->epoch < x->c->epoch) || v == HS_DUPLICATE ||
        v == HS_VERSION_DIFFERS) {
        refusal_error(x, (int)m->from, v, m->job, m->epoch, true);
        snprintf(x->refused, sizeof x->refused, "%s", moe_errmsg());
        LOG_WARN("%s", x->refused);
        hs_drop(h);
        return MOE_OK;
    }
    return refusal_error(x, (int)m->from, v, m->job, m->epoch, true);
}

/* The acceptor, FINISH in: the connector's proof, and the rings it offers; we answer with
 * FINAL (our proof, whether we mapped the rings, whether we could read its memory). */
static moe_status got_finish(struct hs_ctx *x, struct hs *h) {
    memcpy(&h->finish, h->buf, sizeof h->finish);
    struct hs_finish *f = &h->finish;
    f->ring_c2a[sizeof f->ring_c2a - 1] = f->ring_a2c[sizeof f->ring_a2c - 1] = 0;
    if (f->verdict == HS_TOKEN_DIFFERS)
        return moe_fail(MOE_EAUTH, "comm: rank %d refused our proof: the cluster tokens differ",
                        h->peer);
    uint8_t want[32];
    mac_of(x->cfg->token, "connector", &h->hello, sizeof h->hello, &h->reply, sizeof h->reply,
           f, offsetof(struct hs_finish, mac), want);
    memset(&h->final, 0, sizeof h->final);
    if (CRYPTO_memcmp(want, f->mac, 32) != 0)
        h->final.verdict = HS_TOKEN_DIFFERS;
    else if (f->shm)
        map_rings(x, h);
    mac_of(x->cfg->token, "final", &h->hello, sizeof h->hello, &h->reply, sizeof h->reply,
           &h->final, offsetof(struct hs_final, mac), h->final.mac);
    start_io(h, ST_SEND_FINAL, &h->final, sizeof h->final);
    return MOE_OK;
}

/* The acceptor, CONFIRM in: the link is up, with cma if both could read each other. */
static moe_status got_confirm(struct hs_ctx *x, struct hs *h) {
    memcpy(&h->confirm, h->buf, sizeof h->confirm);
    h->cma = h->tx && h->final.cma_ok && h->confirm.cma;
    /* A valid duplicate may have completed meanwhile: the first one wins. */
    if (x->c->peers[h->peer].ch[h->channel].fd >= 0) {
        hs_drop(h);
        return MOE_OK;
    }
    h->phase = PH_DONE;
    return MOE_OK;
}

/* A message has fully arrived or left: decide the next step. Returns an error that fails
 * comm_open; a connection merely dropped returns MOE_OK with phase PH_DEAD. */
static moe_status advance(struct hs_ctx *x, struct hs *h) {
    switch (h->step) {
    /* the connector (the lower rank) */
    case ST_SEND_HELLO: start_io(h, ST_RECV_REPLY, NULL, sizeof h->reply); return MOE_OK;
    case ST_RECV_REPLY: return got_reply(x, h);
    case ST_SEND_FINISH:
        return sent_proof(h, h->finish.verdict, ST_RECV_FINAL, sizeof h->final);
    case ST_RECV_FINAL: return got_final(x, h);
    case ST_SEND_CONFIRM: h->phase = PH_DONE; return MOE_OK;
    /* the acceptor */
    case ST_RECV_HELLO: return got_hello(x, h);
    case ST_SEND_REFUSAL: return sent_refusal(x, h);
    case ST_SEND_REPLY: start_io(h, ST_RECV_FINISH, NULL, sizeof h->finish); return MOE_OK;
    case ST_RECV_FINISH: return got_finish(x, h);
    case ST_SEND_FINAL:
        return sent_proof(h, h->final.verdict, ST_RECV_CONFIRM, sizeof h->confirm);
    case ST_RECV_CONFIRM: return got_confirm(x, h);
    }
    return moe_fail(MOE_EINTERNAL, "comm: handshake in an unknown step");
}

/* Moves bytes of the current message; calls advance() when it is complete. */
static moe_status pump(struct hs_ctx *x, struct hs *h) {
    while (h->phase == PH_IO) {
        long k;
        if (step_is_send(h->step))
            k = tcp_send_some(h->fd, h->peer, h->buf + h->off, h->len - h->off);
        else
            k = tcp_recv_some(h->fd, h->peer, h->buf + h->off, h->len - h->off);
        if (k < 0) {
            if (!h->outgoing) { // an incoming connection that went away: not our problem
                hs_drop(h);
                return MOE_OK;
            }
            char why[512];
            snprintf(why, sizeof why, "%s", moe_errmsg()); // moe_fail overwrites it
            return moe_fail(MOE_EUNAVAILABLE, "comm: handshake with rank %d failed: %s", h->peer,
                            why);
        }
        if (k == 0) return MOE_OK;
        h->off += (size_t)k;
        if (h->off == h->len) CHECK(advance(x, h));
    }
    return MOE_OK;
}

static moe_status finish_connect(struct hs_ctx *x, struct hs *h) {
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err == EINPROGRESS) return MOE_OK;
    if (err == ECONNREFUSED) {
        redial(h);
        return MOE_OK;
    }
    if (err != 0)
        return moe_fail(MOE_EUNAVAILABLE, "comm: connecting to rank %d at %s: %s", h->peer,
                        x->cfg->peers[h->peer], strerror(err));
    CHECK(tcp_set_socket_options(h->fd));
    make_hello(x, h);
    start_io(h, ST_SEND_HELLO, &h->hello, sizeof h->hello);
    return pump(x, h);
}

/* A connection to `peer` broke (reset, closed) during the handshake. When the peer refuses
 * us, it answers on one connection and closes the others, whose unread hellos make the
 * close a reset: the reset can overtake the refusal that says why. So before reporting the
 * break, give the peer's other connections a moment (a fraction of the timeout) to deliver
 * a refusal, and report that instead (MOE_EAUTH naming what differs). */
static moe_status prefer_refusal(struct hs_ctx *x, int peer, moe_status broke) {
    char why[512];
    snprintf(why, sizeof why, "%s", moe_errmsg());
    double until = moe_clock_s() + 0.25 * x->c->timeout_s;
    for (;;) {
        struct pollfd pf[COMM_CHANNELS];
        struct hs *of[COMM_CHANNELS];
        int np = 0;
        for (int i = 0; i < x->nh && np < COMM_CHANNELS; i++) {
            struct hs *h = &x->hs[i];
            if (h->outgoing && h->peer == peer && h->phase == PH_IO && h->fd >= 0) {
                pf[np] = (struct pollfd){.fd = h->fd,
                                         .events = step_is_send(h->step) ? POLLOUT : POLLIN};
                of[np++] = h;
            }
        }
        int ms = (int)((until - moe_clock_s()) * 1000);
        if (np == 0 || ms <= 0 || poll(pf, (nfds_t)np, ms) <= 0) break;
        for (int p = 0; p < np; p++) {
            if (!pf[p].revents) continue;
            moe_status s = pump(x, of[p]);
            if (s == MOE_EAUTH) return s;
            if (s != MOE_OK && x->peer_behind[peer])
                redial(of[p]);
            else if (s != MOE_OK)
                hs_drop(of[p]);
        }
    }
    return moe_fail(broke, "%s", why);
}

/* Starts the outgoing connections: one per channel to every higher tcp peer. */
static moe_status dial_higher_ranks(struct hs_ctx *x) {
    struct comm *c = x->c;
    for (int q = c->rank + 1; q < c->size; q++) {
        if (c->peers[q].mpi_rank >= 0) continue;
        if (!x->cfg->peers || !x->cfg->peers[q])
            return moe_fail(MOE_EINVAL, "comm: no address for rank %d", q);
        for (int ch = 0; ch < COMM_CHANNELS; ch++) {
            struct hs *h = &x->hs[x->nh++];
            h->fd = -1, h->outgoing = true, h->peer = q, h->channel = ch;
            h->deadline = c->open_deadline;
            CHECK(start_connect(x, h));
        }
    }
    return MOE_OK;
}

/* Hands each authenticated connection to its link (a late duplicate is dropped); returns how
 * many are done. */
static int adopt_links(struct hs_ctx *x) {
    int have = 0;
    for (int i = 0; i < x->nh; i++) {
        struct hs *h = &x->hs[i];
        if (h->phase == PH_DONE && h->fd >= 0) {
            struct link *k = &x->c->peers[h->peer].ch[h->channel];
            if (k->fd >= 0) {
                hs_drop(h);
                continue;
            }
            k->fd = h->fd;
            k->tx = h->tx;
            k->rx = h->rx;
            k->cma = h->cma;
            k->pid = (int)(h->outgoing ? h->final.pid : h->finish.pid);
            LOG_DEBUG("comm: rank %d channel %d: link up (%s%s)", h->peer, h->channel,
                      k->tx ? "shared memory" : "tcp", k->cma ? ", cma" : "");
            h->fd = -1;
            h->tx = h->rx = NULL;
        }
        if (h->phase == PH_DONE) have++;
    }
    return have;
}

/* The open's deadline passed with links missing: the error names the first missing rank and
 * the likeliest reason (a refusal we made, a peer still in an older epoch, or silence). */
static moe_status missing_links(struct hs_ctx *x, int have) {
    struct comm *c = x->c;
    int missing = -1, want = x->nout + x->expect_in;
    for (int q = 0; q < c->size && missing < 0; q++)
        if (q != c->rank && c->peers[q].mpi_rank < 0)
            for (int ch = 0; ch < COMM_CHANNELS; ch++)
                if (c->peers[q].ch[ch].fd < 0) missing = q;
    if (x->refused[0])
        return moe_fail(MOE_EAUTH, "comm: rank %d never connected; %s", missing, x->refused);
    if (missing >= 0 && x->peer_behind[missing])
        return moe_fail(MOE_EUNAVAILABLE, "comm: no connection with rank %d within %.1f s: %s",
                        missing, 5 * c->timeout_s, x->behind);
    return moe_fail(MOE_EUNAVAILABLE,
                    "comm: no connection with rank %d within %.1f s (%d of %d links up; is its "
                    "worker running and in this epoch?)",
                    missing, 5 * c->timeout_s, have, want);
}

/* This round's poll set (*np entries): the listener while there is room, and every
 * connection that waits on its socket. Dials again those whose retry is due, drops strangers
 * past their deadline, and shortens *wait_ms to the nearest retry or deadline. */
static moe_status watch(struct hs_ctx *x, double now, int *np_out, int *wait_ms) {
    int np = 0;
    if (x->expect_in > 0 && x->nh < x->cap) {
        x->pf[np] = (struct pollfd){.fd = comm_listener_fd(x->l), .events = POLLIN};
        x->pf_of[np++] = -1;
    }
    for (int i = 0; i < x->nh; i++) {
        struct hs *h = &x->hs[i];
        if (h->phase == PH_RETRY) {
            int ms = (int)((h->retry_at - now) * 1000);
            if (ms <= 0) {
                CHECK(start_connect(x, h));
                ms = 1;
            }
            if (ms < *wait_ms) *wait_ms = ms;
            continue;
        }
        if (h->phase != PH_CONNECT && h->phase != PH_IO) continue;
        if (!h->outgoing && now >= h->deadline) {
            LOG_WARN("comm: dropped an incoming connection that did not finish its handshake "
                     "within %.1f s",
                     x->c->timeout_s);
            hs_drop(h);
            continue;
        }
        short ev = h->phase == PH_CONNECT || step_is_send(h->step) ? POLLOUT : POLLIN;
        x->pf[np] = (struct pollfd){.fd = h->fd, .events = ev};
        x->pf_of[np++] = i;
        int ms = (int)((h->deadline - now) * 1000) + 1;
        if (ms < *wait_ms) *wait_ms = ms;
    }
    *np_out = np;
    return MOE_OK;
}

/* Accepts everything waiting on the listener; each stranger costs one slot until it finishes
 * or its own deadline passes. */
static void accept_all(struct hs_ctx *x) {
    while (x->nh < x->cap) {
        int fd = accept(comm_listener_fd(x->l), NULL, NULL);
        if (fd < 0) break;
        fcntl(fd, F_SETFL, O_NONBLOCK); // not inherited from the listener on Linux
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        struct hs *h = &x->hs[x->nh++];
        memset(h, 0, sizeof *h);
        h->fd = fd, h->outgoing = false, h->peer = -1, h->channel = -1;
        h->deadline = moe_clock_s() + x->c->timeout_s;
        if (h->deadline > x->c->open_deadline) h->deadline = x->c->open_deadline;
        tcp_set_socket_options(fd);
        start_io(h, ST_RECV_HELLO, NULL, sizeof h->hello);
    }
}

/* A connection's socket is ready: move its handshake on. An outgoing one that breaks may
 * have a refusal on its way (prefer_refusal), or be a peer still in an older epoch closing
 * its old comm on us: dial it again. */
static moe_status serve(struct hs_ctx *x, struct hs *h) {
    moe_status res = h->phase == PH_CONNECT ? finish_connect(x, h) : pump(x, h);
    if (res != MOE_OK && res != MOE_EAUTH && h->outgoing) {
        int peer = h->peer;
        hs_drop(h);
        res = prefer_refusal(x, peer, res);
        if (res != MOE_OK && res != MOE_EAUTH && x->peer_behind[peer]) {
            redial(h); // its old comm closing on us: it will listen in our epoch
            res = MOE_OK;
        }
    }
    return res;
}

/* Every connection progresses in one poll() loop until all links are up or the open's
 * deadline passes. */
static moe_status handshake_all(struct hs_ctx *x) {
    double deadline = x->c->open_deadline;
    for (;;) {
        double now = moe_clock_s();
        int have = adopt_links(x);
        if (have == x->nout + x->expect_in) return MOE_OK;
        if (now >= deadline) return missing_links(x, have);
        int np, wait_ms = (int)((deadline - now) * 1000) + 1;
        CHECK(watch(x, now, &np, &wait_ms));
        int r = poll(x->pf, (nfds_t)np, wait_ms);
        if (r < 0 && errno != EINTR) return moe_fail(MOE_EIO, "comm: poll: %s", strerror(errno));
        for (int p = 0; r > 0 && p < np; p++) {
            if (!x->pf[p].revents) continue;
            if (x->pf_of[p] < 0) accept_all(x);
            else CHECK(serve(x, &x->hs[x->pf_of[p]]));
        }
        /* Compact dead strangers away so that the table does not fill up. */
        int w = 0;
        for (int i = 0; i < x->nh; i++)
            if (x->hs[i].phase != PH_DEAD) x->hs[w++] = x->hs[i];
        x->nh = w;
    }
}

moe_status comm_connect_all(struct comm *c, const struct comm_config *cfg,
                            struct comm_listener *l) {
    struct hs_ctx x = {.c = c, .cfg = cfg, .l = l, .shm_capable = c->tun->shm};
    host_identity(x.host);
    for (int q = 0; q < c->size; q++) {
        if (q == c->rank || c->peers[q].mpi_rank >= 0) continue;
        if (q < c->rank) x.expect_in += COMM_CHANNELS;
        else x.nout += COMM_CHANNELS;
    }
    if (x.expect_in + x.nout == 0) return MOE_OK;
    if (x.expect_in > 0 && !l)
        return moe_fail(MOE_EINVAL, "comm: rank %d needs a listener for its lower peers", c->rank);
    /* Room for every expected connection plus strangers (stale workers, port scanners). */
    x.cap = x.nout + x.expect_in + 64;
    x.hs = calloc((size_t)x.cap, sizeof *x.hs);
    x.pf = calloc((size_t)x.cap + 1, sizeof *x.pf);
    x.pf_of = calloc((size_t)x.cap + 1, sizeof *x.pf_of);
    moe_status res = MOE_OK;
    if (!x.hs || !x.pf || !x.pf_of) {
        res = moe_fail(MOE_ENOMEM, "comm: out of memory for the handshake");
        goto exit;
    }
    if (x.expect_in > 0) pthread_mutex_lock(comm_listener_lock(l));
    res = dial_higher_ranks(&x);
    if (res == MOE_OK) res = handshake_all(&x);
    if (x.expect_in > 0) pthread_mutex_unlock(comm_listener_lock(l));
    for (int i = 0; i < x.nh; i++)
        if (x.hs[i].phase != PH_DEAD) hs_drop(&x.hs[i]);
exit:
    free(x.hs);
    free(x.pf);
    free(x.pf_of);
    return res;
}
