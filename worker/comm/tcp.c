/*
 * tcp.c — the tcp byte stream: nonblocking send/receive on one connected socket, socket
 * options, and parsing "host:port".
 *
 * Owns: the errno-to-message rule for a link (EOF, ECONNRESET, EPIPE all mean the peer is
 * gone: MOE_EUNAVAILABLE naming the rank).
 * Never: blocks (every call is MSG_DONTWAIT), raises SIGPIPE (MSG_NOSIGNAL), or decides what
 * the bytes mean.
 */
#include "transport.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

long tcp_send_some(int fd, int peer, const void *p, size_t n) {
    for (;;) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k >= 0) return (long)k;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        moe_fail(MOE_EUNAVAILABLE, "comm: connection to rank %d broke while sending: %s", peer,
                 strerror(errno));
        return -1;
    }
}

long tcp_recv_some(int fd, int peer, void *p, size_t n) {
    for (;;) {
        ssize_t k = recv(fd, p, n, MSG_DONTWAIT);
        if (k > 0) return (long)k;
        if (k == 0) {
            moe_fail(MOE_EUNAVAILABLE, "comm: rank %d closed its connection (process gone?)", peer);
            return -1;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        moe_fail(MOE_EUNAVAILABLE, "comm: connection to rank %d broke while receiving: %s", peer,
                 strerror(errno));
        return -1;
    }
}

moe_status tcp_set_socket_options(int fd) {
    /* Headers and doorbells are small and latency-bound: never wait for Nagle. */
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        return moe_fail(MOE_EIO, "comm: TCP_NODELAY: %s", strerror(errno));
    return MOE_OK;
}

moe_status tcp_parse_address(const char *host_port, char *host, size_t host_len, int *port) {
    if (!host_port) return moe_fail(MOE_EINVAL, "comm: missing address");
    const char *colon = strrchr(host_port, ':');
    if (!colon || colon == host_port || (size_t)(colon - host_port) >= host_len)
        return moe_fail(MOE_EINVAL, "comm: address \"%s\" is not host:port", host_port);
    char *end;
    long v = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || v < 0 || v > 65535)
        return moe_fail(MOE_EINVAL, "comm: address \"%s\" has a bad port", host_port);
    memcpy(host, host_port, (size_t)(colon - host_port));
    host[colon - host_port] = 0;
    *port = (int)v;
    return MOE_OK;
}
