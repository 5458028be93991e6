/*
 * comm_internal.h — what the files of worker/comm share: the comm object, the per-peer links,
 * the wire header, and the one progress engine every operation goes through.
 *
 * Owns: the layout of struct comm and the contracts between comm.c (lifecycle, groups),
 * collectives.c (the operations), engine.c (moving bytes with deadlines), handshake.c
 * (connecting and authenticating), tcp.c / shm.c (byte streams), cma.c (single-copy reads
 * of a local peer's buffer) and mpi.c (Open MPI peers).
 * Never: visible outside worker/comm; the trainer sees only comm.h.
 */
#ifndef MOE_COMM_INTERNAL_H
#define MOE_COMM_INTERNAL_H

#include "comm.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct shm_ring; // shm.c

/* One peer on one channel. The tcp socket is always there for tcp peers: it carries the
 * data itself, or, when the pair shares memory, only doorbell bytes — its EOF is still how
 * the death of the peer is seen at once. */
struct link {
    int fd;                // -1 for MPI peers and self
    struct shm_ring *tx;   // non-NULL: bytes to the peer go through this ring (shm.c)
    struct shm_ring *rx;   // and bytes from the peer come from this one
    uint32_t tx_seq;       // headers sent on this link
    uint32_t rx_seq;       // headers received
    bool cma;              // shm pair that may read each other's memory (cma.c)
    int pid;               // the peer's process, for cma
    uint64_t cma_posted;   // descriptors we sent; the peer acknowledges each in tx's ring
};

struct peer {
    struct link ch[COMM_CHANNELS];
    int mpi_rank; // >= 0: reached through MPI (same pod, mpi backend), the MPI rank = slot
};

/* Every message on a link starts with this header (little-endian on the wire: moed's hosts
 * are x86-64/arm64 and both ends run the same build, so it is sent as the struct). */
enum op_kind {
    OP_ALLTOALLV = 1,
    OP_REDUCE = 2,   // reduce-scatter pieces
    OP_GATHER = 3,   // allgather_chunks
    OP_ALLGATHER = 4,
    OP_BARRIER = 5,
    OP_SEND = 6,
    OP_ACK = 7,      // the receiver's answer to OP_SEND: b = the size it expected
};
struct wire_header {
    uint32_t kind;  // enum op_kind
    uint32_t seq;   // link's tx_seq: both ends count headers, a gap is a broken stream
    uint64_t a;     // bytes of payload that follow this header
    uint64_t b;     // bytes the sender expects back in this exchange (ACK: the bytes the
                    // receiver expected, which the sender checks against what it sent)
};
#define WIRE_HEADER_BYTES ((size_t)sizeof(struct wire_header))
/* kind | WIRE_BY_DESCRIPTOR: instead of the payload, 16 bytes follow (the address and
 * length of the sender's buffer, which the receiver reads with process_vm_readv and then
 * acknowledges through the ring's control block). shm links with cma only. */
#define WIRE_BY_DESCRIPTOR 0x100u
#define WIRE_DESCRIPTOR_BYTES ((size_t)16)

enum stat_kind { STAT_ALLTOALL = 0, STAT_REDUCE, STAT_OTHER, STAT_KINDS };

struct comm_mpi; // mpi.c

struct comm {
    int rank, size, pods, slots;
    double timeout_s;
    double open_deadline; // comm_open's: 5 x timeout_s from its start, MPI and tcp together
    enum comm_backend backend;
    uint64_t epoch;
    char job_id[128];
    const struct comm_tunables *tun; // this process's MOE_COMM_* values (tunables.c)
    struct peer *peers; // (size); peers[rank] is self and unused
    int abort_pipe[2];  // comm_abort writes one byte; the read end is in every poll set
    atomic_int aborted;
    atomic_int in_flight; // operations whose transfers are posted and that have not returned
    atomic_int broken;  // moe_status of the first error that broke the comm, 0 if none
    pthread_mutex_t broken_mu;
    char broken_msg[512];
    atomic_uint_fast64_t stats[STAT_KINDS];
    struct comm_mpi *mpi; // NULL for the tcp backend
    void *scratch[COMM_CHANNELS]; // per-channel leaves of the reductions (members x piece)
    size_t scratch_bytes[COMM_CHANNELS];
};

/* One peer's part in an exchange: a header and `send_bytes` of payload go out (when
 * do_send), a header and its payload come in (when do_recv). Payload that arrives with a
 * size other than recv_bytes is drained and flagged, so the stream stays in step and the
 * comm stays usable after MOE_EINVAL. */
struct xfer {
    int peer;
    enum op_kind kind;    // of our header
    enum op_kind in_kind; // of the header we expect (the same, but OP_ACK for a send)
    bool do_send, do_recv;
    bool check_b;  // the peer's header.b must equal our send_bytes (symmetric exchanges)
    const void *send;
    size_t send_bytes;
    uint64_t hdr_b; // our header.b (usually recv_bytes)
    void *recv;
    size_t recv_bytes;
    /* results */
    struct wire_header in;  // the peer's header once received
    bool mismatch;          // the peer disagreed about a size or the operation
    /* engine state */
    struct wire_header out;
    size_t out_done, in_done; // bytes of header + payload moved so far
    bool out_fin, in_fin;
    bool out_cma, in_cma;     // payload by descriptor, this way or that
    uint64_t desc_out[2], desc_in[2]; // address, length
    uint64_t ack_target;      // out_cma: done once the peer acknowledged this many
    size_t cma_done;          // in_cma: payload bytes read so far
    bool doorbell;            // poll() saw the socket readable: drain it (and see EOF)
    double last_progress;
    void *mpi_state; // mpi.c
};

/* engine.c: moves every xfer to completion, all peers at once (never send-then-receive),
 * failing at once on a broken connection or comm_abort, and with MOE_EUNAVAILABLE naming
 * the rank when a peer makes no progress for timeout_s. On an error other than MOE_EINVAL
 * the comm is marked broken. Returns MOE_EINVAL (after completing every transfer) when a
 * peer disagreed; the message names it. */
moe_status comm_exchange(struct comm *c, int channel, struct xfer *x, int nx);

/* engine.c, for mpi.c: checks a header that has fully arrived, sets x->mismatch, and
 * returns the payload bytes that follow it; <0 when the stream is out of step (broken). */
long comm_header_arrived(struct comm *c, int channel, struct xfer *x);

/* comm.c */
moe_status comm_check_usable(struct comm *c);             // aborted or broken: the error
moe_status comm_break(struct comm *c, moe_status s);       // records s + moe_errmsg, returns s
void *comm_scratch(struct comm *c, int channel, size_t bytes); // NULL: out of memory

/* tcp.c: byte streams on a nonblocking socket. >0 bytes moved, 0 would block,
 * <0 the connection failed (moe_fail set, naming the peer). */
long tcp_send_some(int fd, int peer, const void *p, size_t n);
long tcp_recv_some(int fd, int peer, void *p, size_t n);
moe_status tcp_set_socket_options(int fd);
moe_status tcp_parse_address(const char *host_port, char *host, size_t host_len, int *port);

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
void shm_notify(int fd); // one doorbell byte; errors are the reader side's to find
int shm_revoked(const struct shm_ring *r); // 0 no, 1 aborted, 2 + the culprit's rank

/* cma.c */
void cma_probe_of_self(uint64_t *addr, uint64_t *value);
bool cma_probe_peer(int pid, uint64_t addr, uint64_t value);
long cma_read(int pid, int peer, void *dst, uint64_t src, size_t n); // >0 bytes, <0 error

/* handshake.c: connects and authenticates every tcp link of the comm. */
moe_status comm_connect_all(struct comm *c, const struct comm_config *cfg,
                            struct comm_listener *l);
/* listener.c, for handshake.c */
int comm_listener_fd(const struct comm_listener *l);
pthread_mutex_t *comm_listener_lock(struct comm_listener *l);

/* mpi.c */
moe_status comm_mpi_open(struct comm *c);
void comm_mpi_close(struct comm *c);
/* The comm broke: tell the pod peers at once (LEAVE on every channel); idempotent. */
void comm_mpi_leave(struct comm *c);
moe_status comm_mpi_start(struct comm *c, int channel, struct xfer *x);
/* 1 done, 0 pending, <0 error (moe_fail set). *progressed when anything completed. */
int comm_mpi_progress(struct comm *c, struct xfer *x, bool *progressed);
/* The op failed with MPI requests pending, whose buffers are the caller's: let them finish
 * (up to timeout_s), cancel the receives still open, and abort the MPI job (the failure
 * domain) if a send remains. Returns with no request pending. */
void comm_mpi_settle(struct comm *c, struct xfer *x, int nx);
/* An MPI peer made no progress for timeout_s: aborts the MPI job; does not return. */
void comm_mpi_stalled(void);

#endif
