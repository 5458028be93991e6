/*
 * handshake.c — connecting the tcp links of a comm and proving, on each, that both ends hold
 * the link key of this job and epoch before either says anything else (handshake v2,
 * docs/dataplane.md).
 *
 * Owns: who connects to whom (the lower rank connects to the higher, one connection per
 * channel), the link key K (derived from the job's data-plane key, the job id and the epoch),
 * the handshake messages, the rule that an acceptor reads nothing but a complete HELLO and
 * answers nothing before that HELLO's MAC verified under K, the per-direction encryption keys
 * of an encrypted link, and the setting up of shared-memory rings for peers on the same host.
 * Never: sends a key (only HMAC-SHA256 values over both nonces and the transcript), sends the
 * job id or the epoch, answers or reports anything to a connection that did not authenticate
 * (it is closed silently and counted: one summary line per open), lets anything an incoming
 * connection says fail the open, blocks (every socket is nonblocking and polled against a
 * deadline), or lets an unauthenticated connection become a link. An incoming connection
 * has min(timeout_s, 2 s) to deliver its HELLO; a full table of strangers makes room by
 * closing the oldest one that has not authenticated, so a flood of silent connections cannot
 * starve real peers. A connector whose peer closes, resets or answers unauthentically dials
 * again until the open's deadline: that peer may not have heard of this epoch yet.
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

#define HS_VERSION 2u
#define HS_STRANGERS 64     // incoming connections in progress beyond the expected ones
#define HS_HELLO_S 2.0      // an incoming connection's time to deliver its HELLO, at most
#define HS_ACCEPT_BURST 64  // connections accepted per poll round

struct hs_hello { // connector -> acceptor; names neither the job nor the epoch
    uint8_t nonce[32];
    uint32_t version, from, to, channel, size;
    uint32_t shm;     // connector can share memory
    uint32_t encrypt; // connector wants the link encrypted
    uint32_t pad;
    uint8_t host[32]; // hash of hostname, boot id and namespaces: equal = shm may work
    uint8_t mac[32];  // HMAC(K, "hello" | hello up to mac)
};
struct hs_reply { // acceptor -> connector, only after the hello's mac verified
    uint8_t nonce[32];
    uint32_t shm;     // both ends on one host and capable
    uint32_t encrypt; // acceptor wants the link encrypted
    uint8_t mac[32];  // HMAC(K, "reply" | hello | reply up to mac)
};
struct hs_finish { // connector -> acceptor
    uint32_t shm;  // rings created, names below
    char ring_c2a[64], ring_a2c[64];
    uint32_t pid;                     // cma probe: the acceptor tries to read
    uint64_t probe_addr, probe_value; // probe_value at probe_addr in process pid
    uint8_t mac[32]; // HMAC(K, "finish" | hello | reply | finish up to mac)
};
struct hs_final { // acceptor -> connector
    uint32_t shm;    // the acceptor mapped both rings: the link uses them
    uint32_t cma_ok; // the acceptor could read the connector's probe
    uint32_t pid, pad;
    uint64_t probe_addr, probe_value; // the connector's turn to try
    uint8_t mac[32]; // HMAC(K, "final" | hello | reply | finish | final up to mac)
};
struct hs_confirm { // connector -> acceptor
    uint32_t cma, pad; // both could read each other: large payloads go by descriptor
    uint8_t mac[32];   // HMAC(K, "confirm" | hello | reply | finish | final | confirm up to mac)
};

enum hs_phase { PH_CONNECT, PH_RETRY, PH_IO, PH_DONE, PH_DEAD };
/* The message each step of a connection is sending or waiting for. */
enum hs_step {
    ST_SEND_HELLO, ST_RECV_REPLY, ST_SEND_FINISH, ST_RECV_FINAL, ST_SEND_CONFIRM, // connector
    ST_RECV_HELLO, ST_SEND_REPLY, ST_RECV_FINISH, ST_SEND_FINAL, ST_RECV_CONFIRM, // acceptor
};

struct hs {
    int fd;
    bool outgoing;
    int peer, channel; // for incoming, known once the hello authenticated
    enum hs_phase phase;
    enum hs_step step;
    uint8_t buf[512];
    size_t len, off;
    double born, deadline, retry_at;
    int dials;
    struct hs_hello hello;
    struct hs_reply reply;
    struct hs_finish finish;
    struct hs_final final;
    struct hs_confirm confirm;
    struct shm_ring *tx, *rx;
    struct seal *seal;
    bool cma;
};

/* One comm_open's connections: those we dial, those we accepted, and what they taught us. */
struct hs_ctx {
    struct comm *c;
    const struct comm_config *cfg;
    struct comm_listener *l; // NULL when no lower rank dials us
    uint8_t key[32];         // K: this job's and epoch's link key
    uint8_t host[32];
    bool shm_capable;        // MOE_COMM_SHM
    int expect_in, nout;     // connections to accept, and to dial
    struct hs *hs;           // (cap) every connection in progress
    int nh, cap;             // room for the expected ones plus strangers
    struct pollfd *pf;       // (cap + 1) this round's poll set
    int *pf_of;              // (cap + 1) the connection of each pollfd (-1: the listener)
    /* what this open saw, for its one summary line and the deadline's error */
    int unauthentic;         // incoming: a message whose mac did not verify under K
    int strays;              // incoming: authentic, but not a link we expect (or a duplicate)
    int silent;              // incoming: no hello within its deadline, or closed before
    int evicted;             // incoming: closed to make room for a newer one
    int *unanswered;         // (size) per peer: our dials it closed or answered unauthentically
    char dial_error[256];    // the last error dialling a peer, "" if none
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

/* K = HKDF-Expand(job key, "moed dataplane v2" 0 job id 0 epoch, 32 bytes) (RFC 5869; the
 * job key is uniformly random already, so it serves as the pseudorandom key). */
static void link_key(const uint8_t job_key[32], const char *job, uint64_t epoch,
                     uint8_t out[32]) {
    uint8_t info[256];
    size_t n = 0, jl = strlen(job);
    static const char label[] = "moed dataplane v2";
    memcpy(info, label, sizeof label), n += sizeof label; // with its 0
    memcpy(info + n, job, jl + 1), n += jl + 1;           // jl < 128
    for (int i = 0; i < 8; i++) info[n++] = (uint8_t)(epoch >> (8 * i));
    info[n++] = 1; // HKDF's block counter
    unsigned int ol = 32;
    HMAC(EVP_sha256(), job_key, COMM_KEY_BYTES, info, n, out, &ol);
}

/* HMAC(K, role | the first n parts of the transcript | the last one up to its mac). */
static void mac_of(const struct hs_ctx *x, const struct hs *h, const char *role, int n,
                   size_t last_len, uint8_t out[32]) {
    const void *part[] = {&h->hello, &h->reply, &h->finish, &h->final, &h->confirm};
    const size_t len[] = {sizeof h->hello, sizeof h->reply, sizeof h->finish, sizeof h->final,
                          sizeof h->confirm};
    uint8_t msg[1024];
    size_t m = strlen(role);
    memcpy(msg, role, m);
    for (int i = 0; i < n; i++) {
        size_t l = i == n - 1 ? last_len : len[i];
        memcpy(msg + m, part[i], l), m += l;
    }
    unsigned int ol = 32;
    HMAC(EVP_sha256(), x->key, 32, msg, m, out, &ol);
}

static bool mac_ok(const struct hs_ctx *x, const struct hs *h, const char *role, int n,
                   size_t last_len, const uint8_t mac[32]) {
    uint8_t want[32];
    mac_of(x, h, role, n, last_len, want);
    return CRYPTO_memcmp(want, mac, 32) == 0;
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
           s == ST_SEND_FINAL || s == ST_SEND_CONFIRM;
}

static void hs_drop(struct hs *h) {
    if (h->fd >= 0) close(h->fd);
    h->fd = -1;
    shm_ring_close(h->tx);
    shm_ring_close(h->rx);
    seal_free(h->seal);
    h->tx = h->rx = NULL;
    h->seal = NULL;
    h->phase = PH_DEAD;
}

/* An outgoing connection to dial again shortly: the peer's listener is not up yet, or the
 * peer is not in our epoch yet (it closed us without an answer), or something on the way
 * answered for it. Soon at first, then every 100 ms. */
static void redial(struct hs_ctx *x, struct hs *h, bool unanswered) {
    hs_drop(h);
    if (unanswered) x->unanswered[h->peer]++;
    h->phase = PH_RETRY;
    h->retry_at = moe_clock_s() + (h->dials++ < 10 ? 0.02 : 0.1);
}

/* A dial that failed on our side (no route, no name, no socket): noted for the deadline's
 * error, and dialled again. */
static moe_status dial_failed(struct hs_ctx *x, struct hs *h, const char *why) {
    snprintf(x->dial_error, sizeof x->dial_error, "connecting to rank %d at %s: %s", h->peer,
             x->cfg->peers[h->peer], why);
    redial(x, h, false);
    return MOE_OK;
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
    if (gai != 0) return dial_failed(x, h, gai_strerror(gai));
    h->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (h->fd < 0) {
        freeaddrinfo(ai);
        return dial_failed(x, h, strerror(errno));
    }
    int r = connect(h->fd, ai->ai_addr, ai->ai_addrlen);
    int err = errno;
    freeaddrinfo(ai);
    if (r != 0 && err != EINPROGRESS) {
        if (err == ECONNREFUSED) { // its listener is not up yet: try again shortly
            redial(x, h, false);
            return MOE_OK;
        }
        return dial_failed(x, h, strerror(err));
    }
    h->phase = PH_CONNECT;
    return MOE_OK;
}

static void make_hello(struct hs_ctx *x, struct hs *h) {
    struct hs_hello *m = &h->hello;
    memset(m, 0, sizeof *m);
    RAND_bytes(m->nonce, 32);
    m->version = HS_VERSION;
    m->from = (uint32_t)x->c->rank;
    m->to = (uint32_t)h->peer;
    m->channel = (uint32_t)h->channel;
    m->size = (uint32_t)x->c->size;
    m->shm = x->shm_capable;
    m->encrypt = x->c->encrypt;
    memcpy(m->host, x->host, 32);
    mac_of(x, h, "hello", 1, offsetof(struct hs_hello, mac), m->mac);
}

/* Whether an authentic hello asks for a link we expect and do not have yet. */
static bool hello_is_for_us(const struct hs_ctx *x, const struct hs_hello *m) {
    const struct comm *c = x->c;
    return m->version == HS_VERSION && m->to == (uint32_t)c->rank &&
           m->size == (uint32_t)c->size && m->from < (uint32_t)c->rank &&
           m->channel < COMM_CHANNELS && c->peers[m->from].mpi_rank < 0 &&
           c->peers[m->from].ch[m->channel].fd < 0;
}

/* An authenticated link that wants encryption (either end asked, and it does not go through
 * shared memory) gets its cipher: one key per direction, from K and both nonces. */
static moe_status make_seal(struct hs_ctx *x, struct hs *h) {
    if (h->tx || !(h->hello.encrypt || h->reply.encrypt)) return MOE_OK;
    uint8_t msg[80], c2a[32], a2c[32];
    unsigned int ol = 32;
    memcpy(msg + 8, h->hello.nonce, 32);
    memcpy(msg + 40, h->reply.nonce, 32);
    memcpy(msg, "seal c2a", 8);
    HMAC(EVP_sha256(), x->key, 32, msg, 72, c2a, &ol);
    memcpy(msg, "seal a2c", 8);
    HMAC(EVP_sha256(), x->key, 32, msg, 72, a2c, &ol);
    h->seal = h->outgoing ? seal_new(c2a, a2c) : seal_new(a2c, c2a);
    OPENSSL_cleanse(c2a, sizeof c2a);
    OPENSSL_cleanse(a2c, sizeof a2c);
    return h->seal ? MOE_OK : MOE_ENOMEM;
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

/* The connector, REPLY in: the acceptor proves K over our hello and its nonce. One that does
 * not is not our peer in this epoch (or not our peer at all): dial again. */
static moe_status got_reply(struct hs_ctx *x, struct hs *h) {
    memcpy(&h->reply, h->buf, sizeof h->reply);
    if (!mac_ok(x, h, "reply", 2, offsetof(struct hs_reply, mac), h->reply.mac)) {
        redial(x, h, true);
        return MOE_OK;
    }
    struct hs_finish *f = &h->finish;
    memset(f, 0, sizeof *f);
    if (h->reply.shm && x->shm_capable) offer_rings(x, h);
    mac_of(x, h, "finish", 3, offsetof(struct hs_finish, mac), f->mac);
    start_io(h, ST_SEND_FINISH, f, sizeof *f);
    return MOE_OK;
}

/* The connector, FINAL in: the acceptor's proof over the whole transcript, whether it mapped
 * the rings, and whether it could read our memory; we try to read its memory in turn. */
static moe_status got_final(struct hs_ctx *x, struct hs *h) {
    memcpy(&h->final, h->buf, sizeof h->final);
    struct hs_final *fi = &h->final;
    if (!mac_ok(x, h, "final", 4, offsetof(struct hs_final, mac), fi->mac)) {
        redial(x, h, true);
        return MOE_OK;
    }
    if (!fi->shm) {
        shm_ring_close(h->tx);
        shm_ring_close(h->rx);
        h->tx = h->rx = NULL;
    }
    h->cma = h->tx && fi->cma_ok && h->finish.pid &&
             cma_probe_peer((int)fi->pid, fi->probe_addr, fi->probe_value);
    memset(&h->confirm, 0, sizeof h->confirm);
    h->confirm.cma = h->cma;
    mac_of(x, h, "confirm", 5, offsetof(struct hs_confirm, mac), h->confirm.mac);
    start_io(h, ST_SEND_CONFIRM, &h->confirm, sizeof h->confirm);
    return MOE_OK;
}

/* The acceptor, HELLO in: nothing of it counts before its mac verified under K; a hello
 * that does not verify, or asks for a link we do not expect, is closed without a word. */
static moe_status got_hello(struct hs_ctx *x, struct hs *h) {
    memcpy(&h->hello, h->buf, sizeof h->hello);
    struct hs_hello *m = &h->hello;
    if (!mac_ok(x, h, "hello", 1, offsetof(struct hs_hello, mac), m->mac)) {
        x->unauthentic++;
        hs_drop(h);
        return MOE_OK;
    }
    if (!hello_is_for_us(x, m)) {
        x->strays++;
        hs_drop(h);
        return MOE_OK;
    }
    h->peer = (int)m->from;
    h->channel = (int)m->channel;
    struct hs_reply *r = &h->reply;
    memset(r, 0, sizeof *r);
    RAND_bytes(r->nonce, 32);
    r->shm = m->shm && x->shm_capable && memcmp(m->host, x->host, 32) == 0;
    r->encrypt = x->c->encrypt;
    mac_of(x, h, "reply", 2, offsetof(struct hs_reply, mac), r->mac);
    /* A proven peer gets the whole timeout for the rest. */
    h->deadline = moe_clock_s() + x->c->timeout_s;
    if (h->deadline > x->c->open_deadline) h->deadline = x->c->open_deadline;
    start_io(h, ST_SEND_REPLY, r, sizeof *r);
    return MOE_OK;
}

/* The acceptor, FINISH in: the connector's proof over both nonces, and the rings it offers;
 * we answer with FINAL (our proof, whether we mapped the rings, whether we could read its
 * memory). A replayed hello ends here: its sender cannot prove our fresh nonce. */
static moe_status got_finish(struct hs_ctx *x, struct hs *h) {
    memcpy(&h->finish, h->buf, sizeof h->finish);
    struct hs_finish *f = &h->finish;
    if (!mac_ok(x, h, "finish", 3, offsetof(struct hs_finish, mac), f->mac)) {
        x->unauthentic++;
        hs_drop(h);
        return MOE_OK;
    }
    f->ring_c2a[sizeof f->ring_c2a - 1] = f->ring_a2c[sizeof f->ring_a2c - 1] = 0;
    memset(&h->final, 0, sizeof h->final);
    if (f->shm) map_rings(x, h);
    mac_of(x, h, "final", 4, offsetof(struct hs_final, mac), h->final.mac);
    start_io(h, ST_SEND_FINAL, &h->final, sizeof h->final);
    return MOE_OK;
}

/* The acceptor, CONFIRM in: the link is up, with cma if both could read each other. */
static moe_status got_confirm(struct hs_ctx *x, struct hs *h) {
    memcpy(&h->confirm, h->buf, sizeof h->confirm);
    if (!mac_ok(x, h, "confirm", 5, offsetof(struct hs_confirm, mac), h->confirm.mac) ||
        x->c->peers[h->peer].ch[h->channel].fd >= 0) { // a duplicate: the first one won
        x->unauthentic++;
        hs_drop(h);
        return MOE_OK;
    }
    h->cma = h->tx && h->final.cma_ok && h->confirm.cma;
    h->phase = PH_DONE;
    return make_seal(x, h);
}

/* A message has fully arrived or left: decide the next step. Returns an error only for a
 * failure of our own (one that fails comm_open); a connection dropped or to dial again
 * returns MOE_OK. */
static moe_status advance(struct hs_ctx *x, struct hs *h) {
    switch (h->step) {
    /* the connector (the lower rank) */
    case ST_SEND_HELLO: start_io(h, ST_RECV_REPLY, NULL, sizeof h->reply); return MOE_OK;
    case ST_RECV_REPLY: return got_reply(x, h);
    case ST_SEND_FINISH: start_io(h, ST_RECV_FINAL, NULL, sizeof h->final); return MOE_OK;
    case ST_RECV_FINAL: return got_final(x, h);
    case ST_SEND_CONFIRM: h->phase = PH_DONE; return make_seal(x, h);
    /* the acceptor */
    case ST_RECV_HELLO: return got_hello(x, h);
    case ST_SEND_REPLY: start_io(h, ST_RECV_FINISH, NULL, sizeof h->finish); return MOE_OK;
    case ST_RECV_FINISH: return got_finish(x, h);
    case ST_SEND_FINAL: start_io(h, ST_RECV_CONFIRM, NULL, sizeof h->confirm); return MOE_OK;
    case ST_RECV_CONFIRM: return got_confirm(x, h);
    }
    return moe_fail(MOE_EINTERNAL, "comm: handshake in an unknown step");
}

/* Moves bytes of the current message; calls advance() when it is complete. A connection that
 * breaks is dropped (incoming) or dialled again (outgoing: the peer closed or reset us,
 * which is how a peer not yet in our epoch answers). */
static moe_status pump(struct hs_ctx *x, struct hs *h) {
    while (h->phase == PH_IO) {
        long k;
        if (step_is_send(h->step))
            k = tcp_send_some(h->fd, h->peer, h->buf + h->off, h->len - h->off);
        else
            k = tcp_recv_some(h->fd, h->peer, h->buf + h->off, h->len - h->off);
        if (k < 0) {
            if (!h->outgoing) {
                if (h->step == ST_RECV_HELLO) x->silent++;
                hs_drop(h);
            } else {
                redial(x, h, true);
            }
            return MOE_OK;
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
        redial(x, h, false);
        return MOE_OK;
    }
    if (err != 0) return dial_failed(x, h, strerror(err));
    CHECK(tcp_set_socket_options(h->fd));
    make_hello(x, h);
    start_io(h, ST_SEND_HELLO, &h->hello, sizeof h->hello);
    return pump(x, h);
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
            k->seal = h->seal;
            k->cma = h->cma;
            k->pid = (int)(h->outgoing ? h->final.pid : h->finish.pid);
            LOG_DEBUG("comm: rank %d channel %d: link up (%s%s)", h->peer, h->channel,
                      k->tx ? "shared memory" : k->seal ? "tcp, encrypted" : "tcp",
                      k->cma ? ", cma" : "");
            h->fd = -1;
            h->tx = h->rx = NULL;
            h->seal = NULL;
        }
        if (h->phase == PH_DONE) have++;
    }
    return have;
}

/* The open's deadline passed with links missing: the error names the first missing rank and
 * what we saw of it (it closed our dials unanswered, a dial failed, or silence). */
static moe_status missing_links(struct hs_ctx *x, int have) {
    struct comm *c = x->c;
    int missing = -1, want = x->nout + x->expect_in;
    for (int q = 0; q < c->size && missing < 0; q++)
        if (q != c->rank && c->peers[q].mpi_rank < 0)
            for (int ch = 0; ch < COMM_CHANNELS; ch++)
                if (c->peers[q].ch[ch].fd < 0) missing = q;
    char seen[400] = "";
    if (missing > c->rank && x->unanswered[missing] > 0)
        snprintf(seen, sizeof seen, "; it closed %d of our connections without an authentic "
                 "answer (another job or epoch, or another data-plane key)",
                 x->unanswered[missing]);
    else if (missing > c->rank && x->dial_error[0])
        snprintf(seen, sizeof seen, "; %s", x->dial_error);
    else if (missing < c->rank && x->unauthentic + x->strays > 0)
        snprintf(seen, sizeof seen, "; %d connections here did not authenticate",
                 x->unauthentic + x->strays);
    return moe_fail(MOE_EUNAVAILABLE,
                    "comm: no connection with rank %d within %.1f s (%d of %d links up; is its "
                    "worker running and in this epoch?)%s",
                    missing, 5 * c->timeout_s, have, want, seen);
}

/* This round's poll set (*np entries): the listener, and every connection that waits on its
 * socket. Dials again those whose retry is due, drops incoming ones past their deadline,
 * and shortens *wait_ms to the nearest retry or deadline. */
static moe_status watch(struct hs_ctx *x, double now, int *np_out, int *wait_ms) {
    int np = 0;
    if (x->expect_in > 0) {
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
            x->silent++; // no hello in time, or stalled after it
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

/* A table entry for a new incoming connection: a free one, else the oldest incoming one
 * that has not authenticated (then the oldest incoming one not done), closed to make room. */
static struct hs *room_for_incoming(struct hs_ctx *x) {
    if (x->nh < x->cap) return &x->hs[x->nh++];
    struct hs *oldest = NULL;
    for (int pass = 0; pass < 2 && !oldest; pass++)
        for (int i = 0; i < x->nh; i++) {
            struct hs *h = &x->hs[i];
            if (h->phase == PH_DEAD) return h;
            if (h->outgoing || h->phase == PH_DONE || (pass == 0 && h->step != ST_RECV_HELLO))
                continue;
            if (!oldest || h->born < oldest->born) oldest = h;
        }
    if (oldest) {
        x->evicted++;
        hs_drop(oldest);
    }
    return oldest;
}

/* Accepts what waits on the listener (a burst at most, so that the connections in progress
 * move on too) and reads each one's hello at once: a real peer sends it right away. */
static moe_status accept_some(struct hs_ctx *x) {
    for (int n = 0; n < HS_ACCEPT_BURST; n++) {
        int fd = accept(comm_listener_fd(x->l), NULL, NULL);
        if (fd < 0) break;
        fcntl(fd, F_SETFL, O_NONBLOCK); // not inherited from the listener on Linux
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        struct hs *h = room_for_incoming(x);
        if (!h) { // every entry is a link in the making: cannot happen with HS_STRANGERS > 0
            close(fd);
            continue;
        }
        memset(h, 0, sizeof *h);
        h->fd = fd, h->outgoing = false, h->peer = -1, h->channel = -1;
        h->born = moe_clock_s();
        double hello_s = x->c->timeout_s < HS_HELLO_S ? x->c->timeout_s : HS_HELLO_S;
        h->deadline = h->born + hello_s;
        if (h->deadline > x->c->open_deadline) h->deadline = x->c->open_deadline;
        tcp_set_socket_options(fd);
        start_io(h, ST_RECV_HELLO, NULL, sizeof h->hello);
        CHECK(pump(x, h));
    }
    return MOE_OK;
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
        if (x->cfg->cancel && atomic_load(x->cfg->cancel))
            return moe_fail(MOE_EINTERNAL, "comm: the open was called off (%d of %d links up)",
                            have, x->nout + x->expect_in);
        int np, wait_ms = (int)((deadline - now) * 1000) + 1;
        CHECK(watch(x, now, &np, &wait_ms));
        if (x->cfg->cancel && wait_ms > COMM_CANCEL_POLL_MS) wait_ms = COMM_CANCEL_POLL_MS;
        int r = poll(x->pf, (nfds_t)np, wait_ms);
        if (r < 0 && errno != EINTR) return moe_fail(MOE_EIO, "comm: poll: %s", strerror(errno));
        for (int p = 0; r > 0 && p < np; p++) {
            if (!x->pf[p].revents) continue;
            struct hs *h = x->pf_of[p] < 0 ? NULL : &x->hs[x->pf_of[p]];
            if (!h) CHECK(accept_some(x));
            else if (h->phase == PH_CONNECT) CHECK(finish_connect(x, h));
            else CHECK(pump(x, h));
        }
        /* Compact dead strangers away so that the table does not fill up. */
        int w = 0;
        for (int i = 0; i < x->nh; i++)
            if (x->hs[i].phase != PH_DEAD) x->hs[w++] = x->hs[i];
        x->nh = w;
    }
}

/* One line per open for what strangers did, never one per connection. */
static void log_strangers(const struct hs_ctx *x) {
    if (x->unauthentic + x->strays + x->silent + x->evicted == 0) return;
    LOG_WARN("comm: rank %d closed incoming connections without an answer: %d did not "
             "authenticate, %d were not for a link we expect, %d did not finish in time (%d "
             "of them closed to make room)",
             x->c->rank, x->unauthentic, x->strays, x->silent + x->evicted, x->evicted);
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
    link_key(cfg->key, c->job_id, c->epoch, x.key);
    /* Room for every expected connection plus strangers (stale workers, port scanners). */
    x.cap = x.nout + x.expect_in + HS_STRANGERS;
    x.hs = calloc((size_t)x.cap, sizeof *x.hs);
    x.pf = calloc((size_t)x.cap + 1, sizeof *x.pf);
    x.pf_of = calloc((size_t)x.cap + 1, sizeof *x.pf_of);
    x.unanswered = calloc((size_t)c->size, sizeof *x.unanswered);
    moe_status res = MOE_OK;
    if (!x.hs || !x.pf || !x.pf_of || !x.unanswered) {
        res = moe_fail(MOE_ENOMEM, "comm: out of memory for the handshake");
        goto exit;
    }
    if (x.expect_in > 0) pthread_mutex_lock(comm_listener_lock(l));
    res = dial_higher_ranks(&x);
    if (res == MOE_OK) res = handshake_all(&x);
    if (x.expect_in > 0) pthread_mutex_unlock(comm_listener_lock(l));
    log_strangers(&x);
    for (int i = 0; i < x.nh; i++)
        if (x.hs[i].phase != PH_DEAD) hs_drop(&x.hs[i]);
exit:
    OPENSSL_cleanse(x.key, sizeof x.key);
    free(x.hs);
    free(x.pf);
    free(x.pf_of);
    free(x.unanswered);
    return res;
}
