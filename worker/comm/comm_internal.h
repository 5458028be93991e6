/*
 * comm_internal.h — the lowest layer of worker/comm: the state every file reads (the comm, its
 * per-peer links, the transfers of one operation, the tunables it was opened with) and the
 * wire format.
 *
 * The files form layers, and a file calls only into its own layer's helpers or lower ones:
 *   5  comm.c (open, abort, close, groups)      collectives.c (operations as exchanges)
 *   4  engine.c (moving one operation; engine.h)   handshake.c (connecting; handshake.h)
 *      watch.c (a thread that reports a peer's hang-up at once: below)
 *   3  stream.c (tcp and shm transfers)   mpi.c (Open MPI transfers)   listener.c
 *   2  tcp.c (sockets)   seal.c (encrypted frames on tcp.c)   shm.c (rings; doorbells on
 *      tcp.c)   cma.c (single copies)
 *   1  wire.c (the header check)   tunables.c (MOE_COMM_* knobs)          — this header
 * Layers 2 and 3 are declared in transport.h; the engine drives layer 3 through a table of
 * function pointers per kind of peer (struct transport), so a transport reports what arrived
 * by returning, never by calling the engine.
 * Owns: the layout of struct comm, struct link and struct xfer, and the wire header.
 * Never: visible outside worker/comm (the trainer sees only comm.h); nothing declared here
 * calls a higher layer.
 */
#ifndef MOE_COMM_INTERNAL_H
#define MOE_COMM_INTERNAL_H

#include "comm.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct shm_ring;  // shm.c
struct seal;      // seal.c
struct comm_mpi;  // mpi.c
struct transport; // transport.h

/* One peer on one channel. The tcp socket is always there for tcp peers: it carries the
 * data itself, or, when the pair shares memory, only doorbell bytes — its EOF is still how
 * the death of the peer is seen at once. */
struct link {
    int fd;                // -1 for MPI peers and self
    struct shm_ring *tx;   // non-NULL: bytes to the peer go through this ring (shm.c)
    struct shm_ring *rx;   // and bytes from the peer come from this one
    struct seal *seal;     // non-NULL: the tcp bytes are encrypted (never with tx/rx)
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

struct comm {
    int rank, size, pods, slots;
    double timeout_s;
    double open_deadline; // comm_open's: 5 x timeout_s from its start, MPI and tcp together
    enum comm_backend backend;
    uint64_t epoch;
    char job_id[128];
    bool encrypt; // tcp links are sealed (seal.c): the config's or MOE_COMM_ENCRYPT's wish
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
    double next_peer_check; // comm_check_peers looks again from then on (its caller's thread)
    struct comm_watch *watch; // NULL, or the thread that reports a lost peer (watch.c)
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
    const struct transport *t; // how this peer is reached (engine.c picks it)
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

/* wire.c: the peer's header has fully arrived in x->in over link k: checks that it keeps the
 * stream in step (its seq), notes in x->mismatch whether the peer disagrees about the
 * operation or a size, and returns the payload bytes that follow it; <0 when the stream is
 * out of step (moe_fail set; the comm must break). Every transport calls it. */
long wire_header_arrived(struct link *k, int channel, struct xfer *x);
/* The MOE_EINVAL for a transfer whose peer disagreed, naming it and both sizes. */
moe_status wire_mismatch_error(const struct xfer *x);
const char *wire_kind_name(uint32_t kind); // "alltoallv"

/* watch.c (layer 4, beside engine.c): the thread behind comm_config.on_peer_lost. Started by
 * comm_open once every link is up (nothing to do without a callback or a tcp peer); stopped
 * by comm_close, after the abort pipe is written (which also ends it). */
moe_status comm_watch_start(struct comm *c, void (*cb)(void *, int, bool, const char *),
                            void *arg);
void comm_watch_stop(struct comm *c);

#endif
