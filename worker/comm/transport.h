/*
 * transport.h — layers 2 and 3 of worker/comm: how bytes move between two ranks.
 *
 * Layer 2 moves bytes and knows nothing of messages: tcp.c (a nonblocking socket), seal.c
 * (the same socket, encrypted per frame), shm.c (a
 * byte ring in shared memory, with the pair's socket as doorbell) and cma.c (reading a local
 * peer's buffer). Layer 3 carries one transfer's messages over them: stream.c (header then
 * payload or descriptor, over a socket or a ring) and mpi.c (header and payload messages
 * through Open MPI), each behind a struct transport that the engine drives; and listener.c,
 * the socket that handshake.c accepts connections from.
 * Owns: the contract between the engine and the transports (struct transport).
 * Never: a transport calls the engine (it reports by its return values, and the engine
 * fails the operation) or touches a peer of another transport.
 */
#ifndef MOE_COMM_TRANSPORT_H
#define MOE_COMM_TRANSPORT_H

#include "comm_internal.h"

/* How the engine waits while a transport's transfers are pending. */
enum transport_wait {
    WAIT_POLL, // its socket tells when bytes can move: poll() on it (tcp)
    WAIT_SPIN, // a running peer answers within microseconds: yield a while, then arm and
               // poll() on the doorbell socket (shm)
    WAIT_TEST, // it progresses only inside its own calls: test again at once (mpi)
};

/* One kind of peer, as the engine sees it (redis's connection types, libuv's stream
 * vtables): the engine picks the table for each transfer and never asks which it is. */
struct transport {
    enum transport_wait wait;
    /* Before the engine's loop, once the header is in x->out: posts what can be posted.
     * NULL: nothing to post. */
    moe_status (*start)(struct comm *c, int channel, struct xfer *x);
    /* One round of nonblocking progress: sets x->out_fin / x->in_fin, and *moved when
     * anything moved; an error (moe_fail set, naming the peer) fails the operation. */
    moe_status (*progress)(struct comm *c, int channel, struct xfer *x, bool *moved);
    /* on: the engine is about to sleep in poll() (the peer must ring); off: it runs again.
     * NULL: the peer's socket wakes poll() by itself. */
    void (*arm)(struct comm *c, int channel, struct xfer *x, bool on);
    /* The operation failed: make this transport's transfers among x[0..nx) safe to forget
     * (their buffers go back to the caller). culprit: the rank that failed it, or -1.
     * NULL: nothing outlives the operation. */
    void (*abandon)(struct comm *c, int channel, struct xfer *x, int nx, int culprit);
    /* x's peer has made no progress for idle_s (>= timeout_s): the operation fails when this
     * returns, and it may not return (mpi aborts its MPI job: the pod is the failure domain).
     * NULL: nothing more to do. */
    void (*stalled)(struct comm *c, const struct xfer *x, double idle_s);
};

extern const struct transport transport_tcp; // stream.c: a tcp peer
extern const struct transport transport_shm; // stream.c: a tcp peer on this host, by rings
extern const struct transport transport_mpi; // mpi.c: a pod peer of the mpi backend

/* tcp.c: byte streams on a nonblocking socket. >0 bytes moved, 0 would block,
 * <0 the connection failed (moe_fail set, naming the peer). */
long tcp_send_some(int fd, int peer, const void *p, size_t n);
long tcp_recv_some(int fd, int peer, void *p, size_t n);
moe_status tcp_set_socket_options(int fd);
moe_status tcp_parse_address(const char *host_port, char *host, size_t host_len, int *port);

/* seal.c: the tcp stream encrypted (AES-256-GCM per frame), with tcp's return convention;
 * a frame whose tag does not verify is SEAL_EAUTH (moe_fail set, MOE_EAUTH). A frame is made
 * of one send call's bytes, and seal_send_some reports them sent only once the whole frame
 * is on the wire: until then it returns 0 and the caller presents the same bytes again. */
#define SEAL_EAUTH (-2L)
struct seal *seal_new(const uint8_t tx_key[32], const uint8_t rx_key[32]);
void seal_free(struct seal *s);
long seal_send_some(struct seal *s, int fd, int peer, const void *p, size_t n);
long seal_recv_some(struct seal *s, int fd, int peer, void *p, size_t n);

/* shm.c: a byte ring in a shared segment between two processes of one host, with the
 * pair's tcp socket as doorbell. Same return convention as tcp. */
struct shm_ring *shm_ring_create(size_t capacity, char *name, size_t name_len);
struct shm_ring *shm_ring_attach(const char *name); // unlinks the name once mapped
void shm_ring_close(struct shm_ring *r);
long shm_send_some(struct shm_ring *r, int fd, int peer, const void *p, size_t n);
long shm_recv_some(struct shm_ring *r, int fd, int peer, void *p, size_t n);
/* Reads pending doorbell bytes; <0 when the socket reports EOF or an error. */
int shm_drain_doorbell(int fd, int peer);

/* shm.c, for cma: the receiver acknowledges a descriptor in the control block of the ring
 * it came through; a sender that gives up revokes, so a late reader knows its copy may be
 * garbage. */
void shm_ack(struct shm_ring *r, int fd);
/* on: this side may sleep on the link (the peer will ring); off: it is running again. */
void shm_arm(struct shm_ring *tx, struct shm_ring *rx, bool on);
uint64_t shm_acks(const struct shm_ring *r);
void shm_revoke(struct shm_ring *r, int culprit); // culprit: the rank that failed us, or -1
int shm_revoked(const struct shm_ring *r); // 0 no, 1 aborted, 2 + the culprit's rank

/* cma.c */
void cma_probe_of_self(uint64_t *addr, uint64_t *value);
bool cma_probe_peer(int pid, uint64_t addr, uint64_t value);
long cma_read(int pid, int peer, void *dst, uint64_t src, size_t n); // >0 bytes, <0 error

/* listener.c, for handshake.c */
int comm_listener_fd(const struct comm_listener *l);
pthread_mutex_t *comm_listener_lock(struct comm_listener *l);

/* mpi.c: the pod's MPI communicators (one per channel), for comm.c's open and close. */
moe_status comm_mpi_open(struct comm *c);
void comm_mpi_close(struct comm *c);
/* The comm broke: tell the pod peers at once (LEAVE on every channel); idempotent. */
void comm_mpi_leave(struct comm *c);

#endif
