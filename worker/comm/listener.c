/*
 * listener.c — a worker's one listening socket for the data plane.
 *
 * Owns: binding host:port, the address peers are told, the size of the kernel's accept queue
 * (LISTEN_BACKLOG: small and explicit, so that a flood of connections costs the kernel a
 * bounded queue, not us), and the lock that lets only one comm_open at a time take
 * connections from it (connections for a comm that is not being opened wait in the queue;
 * handshake.c closes, without an answer, those that do not prove the open's link key).
 * Never: reads from an accepted connection (handshake.c does, under a deadline).
 */
#include "transport.h"
#include "../../common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Peers dial before this worker reaches comm_open: the queue holds every channel of 42
 * peers' connections; more wait for their SYN to be retried (the kernel's business), and
 * handshake.c drains the queue as fast as it can read hellos. */
#define LISTEN_BACKLOG 128

struct comm_listener {
    int fd;
    char address[COMM_ADDR_MAX];
    pthread_mutex_t lock;
};

moe_status comm_listener_open(struct comm_listener **out, const char *host_port) {
    *out = NULL;
    char host[COMM_ADDR_MAX];
    int port;
    CHECK(tcp_parse_address(host_port, host, sizeof host, &port));
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int gai = getaddrinfo(host, port_s, &hints, &ai);
    if (gai != 0)
        return moe_fail(MOE_EINVAL, "comm: listener address \"%s\": %s", host_port,
                        gai_strerror(gai));
    moe_status res = MOE_OK;
    struct comm_listener *l = calloc(1, sizeof *l);
    if (!l) {
        res = moe_fail(MOE_ENOMEM, "comm: out of memory for a listener");
        goto fail;
    }
    l->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l->fd < 0) {
        res = moe_fail(MOE_EIO, "comm: socket: %s", strerror(errno));
        goto fail;
    }
    int one = 1;
    setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l->fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(l->fd, LISTEN_BACKLOG) != 0) {
        res = moe_fail(MOE_EIO, "comm: cannot listen on %s: %s", host_port, strerror(errno));
        goto fail;
    }
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    if (getsockname(l->fd, (struct sockaddr *)&sa, &sl) != 0) {
        res = moe_fail(MOE_EIO, "comm: getsockname: %s", strerror(errno));
        goto fail;
    }
    char nhost[NI_MAXHOST], nport[NI_MAXSERV];
    if (getnameinfo((struct sockaddr *)&sa, sl, nhost, sizeof nhost, nport, sizeof nport,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        res = moe_fail(MOE_EIO, "comm: getnameinfo failed for %s", host_port);
        goto fail;
    }
    /* Peers are told the host as configured (a name resolves on their side too); the port
     * is the one the kernel picked when asked for 0. */
    if ((size_t)snprintf(l->address, sizeof l->address, "%.*s:%.8s", COMM_ADDR_MAX - 10, host,
                         nport) >= sizeof l->address) {
        res = moe_fail(MOE_EINVAL, "comm: listener address \"%s\" too long", host_port);
        goto fail;
    }
    pthread_mutex_init(&l->lock, NULL);
    freeaddrinfo(ai);
    *out = l;
    LOG_DEBUG("comm: listening on %s", l->address);
    return MOE_OK;
fail:
    if (l && l->fd >= 0) close(l->fd);
    free(l);
    freeaddrinfo(ai);
    return res;
}

const char *comm_listener_address(const struct comm_listener *l) { return l->address; }

void comm_listener_close(struct comm_listener *l) {
    if (!l) return;
    close(l->fd);
    pthread_mutex_destroy(&l->lock);
    free(l);
}

int comm_listener_fd(const struct comm_listener *l) { return l->fd; }
pthread_mutex_t *comm_listener_lock(struct comm_listener *l) { return &l->lock; }
