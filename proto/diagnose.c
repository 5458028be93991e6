/*
 * diagnose.c — one dial to name why a channel fails (see diagnose.h).
 */
#include "diagnose.h"

#include "../common/clock.h"
#include "../common/netaddr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

struct dial {
    char host[NET_HOST_MAX], port[16];
    const char *target;
    double deadline;   // moe_clock_s()
    int cert_requested; // the server sent a CertificateRequest
};

/* "Connection refused" -> "connection refused": it continues a sentence. */
static void lower_first(char *s) {
    if (s[0]) s[0] = (char)tolower((unsigned char)s[0]);
}

static int connect_one(const struct addrinfo *ai, double deadline, int *err) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) {
        *err = errno;
        return -1;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
        *err = errno;
        close(fd);
        return -1;
    }
    struct pollfd p = {fd, POLLOUT, 0};
    int left_ms = (int)((deadline - moe_clock_s()) * 1000);
    int r = poll(&p, 1, left_ms > 0 ? left_ms : 0);
    socklen_t len = sizeof *err;
    if (r <= 0) *err = ETIMEDOUT;
    else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, err, &len) != 0) *err = errno;
    if (r <= 0 || *err) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    double left = deadline - moe_clock_s();
    if (left < 0.05) left = 0.05;
    struct timeval tv = {(time_t)left, (suseconds_t)((left - (double)(time_t)left) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

/* A connected socket to the target, or -1 with the reason in `why`. */
static int dial_tcp(struct dial *d, char *why, size_t cap) {
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int g = getaddrinfo(d->host, d->port, &hints, &res);
    if (g != 0) {
        snprintf(why, cap, "cannot resolve %s: %s", d->host, gai_strerror(g));
        return -1;
    }
    int fd = -1, err = 0;
    for (const struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next)
        fd = connect_one(ai, d->deadline, &err);
    freeaddrinfo(res);
    if (fd < 0) {
        char e[128];
        snprintf(e, sizeof e, "%s", err == ETIMEDOUT ? "timed out" : strerror(err));
        lower_first(e);
        snprintf(why, cap, "cannot connect to %s: %s", d->target, e);
    }
    return fd;
}

static int client_cert_cb(SSL *ssl, X509 **x509, EVP_PKEY **pkey) {
    (void)x509;
    (void)pkey;
    struct dial *d = SSL_get_app_data(ssl);
    d->cert_requested = 1;
    return 0; // we have none to give
}

/* A client context as gRPC's: the CA (or no verification), ALPN h2. NULL: `why` says. */
static SSL_CTX *client_ctx(const char *ca, char *why, size_t cap) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(why, cap, "cannot make a TLS context");
        return NULL;
    }
    static const unsigned char alpn[] = {2, 'h', '2'};
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn);
    SSL_CTX_set_client_cert_cb(ctx, client_cert_cb);
    if (ca && SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        snprintf(why, cap, "cannot read the CA %s as PEM certificates", ca);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, ca ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    return ctx;
}

/* The target's host as the certificate must name it (gRPC checks the same). */
static void expect_host(SSL *ssl, const char *host) {
    unsigned char buf[16];
    int ip = inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
    if (ip) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
    } else {
        SSL_set_tlsext_host_name(ssl, host);
        SSL_set1_host(ssl, host);
    }
}

/* The handshake failed: which mistake it was. */
static enum rpc_diagnosis handshake_failed(struct dial *d, SSL *ssl, int r, const char *ca,
                                           char *why, size_t cap) {
    long v = SSL_get_verify_result(ssl);
    unsigned long e = ERR_peek_last_error();
    int reason = ERR_GET_REASON(e), err = SSL_get_error(ssl, r);
    if (ca && v != X509_V_OK) {
        if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH)
            snprintf(why, cap, "TLS handshake with %s failed: hostname mismatch: the server's "
                     "certificate is not for %s", d->target, d->host);
        else
            snprintf(why, cap, "TLS handshake with %s failed: certificate verify failed (%s): "
                     "the CA given (%s) did not sign the server's certificate", d->target,
                     X509_verify_cert_error_string(v), ca);
        return RPC_DIAG_TLS;
    }
    if (d->cert_requested) {
        snprintf(why, cap, "TLS handshake with %s failed: the server asked for a client "
                 "certificate and none was given", d->target);
        return RPC_DIAG_TLS;
    }
    if (err == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        snprintf(why, cap, "TLS handshake with %s timed out: the server does not answer",
                 d->target);
        return RPC_DIAG_DOWN;
    }
    if (!ca) return RPC_DIAG_FINE; // a plaintext server, called in plaintext: as it should be
    if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_PACKET_LENGTH_TOO_LONG ||
        reason == SSL_R_UNEXPECTED_EOF_WHILE_READING ||
        err == SSL_ERROR_SYSCALL || err == SSL_ERROR_ZERO_RETURN) {
        snprintf(why, cap, "TLS handshake with %s failed: the server does not speak TLS (it "
                 "serves plaintext: call it without a CA)", d->target);
        return RPC_DIAG_TLS;
    }
    char text[256];
    ERR_error_string_n(e, text, sizeof text);
    snprintf(why, cap, "TLS handshake with %s failed: %s", d->target,
             e ? ERR_reason_error_string(e) ? ERR_reason_error_string(e) : text : "unknown error");
    return RPC_DIAG_TLS;
}

/* TLS 1.3 finishes the client's side of the handshake before the server judges the client's
 * certificate: a server that asked for one says no (an alert) on the first read. */
static enum rpc_diagnosis refused_after_handshake(struct dial *d, SSL *ssl, char *why,
                                                  size_t cap) {
    if (!d->cert_requested) return RPC_DIAG_FINE;
    char byte;
    ERR_clear_error();
    int r = SSL_peek(ssl, &byte, 1);
    if (r > 0 || (SSL_get_error(ssl, r) == SSL_ERROR_SYSCALL &&
                  (errno == EAGAIN || errno == EWOULDBLOCK)))
        return RPC_DIAG_FINE; // it talks (a gRPC server sends its settings), or waits
    snprintf(why, cap, "TLS handshake with %s failed: the server asked for a client "
             "certificate and none was given", d->target);
    return RPC_DIAG_TLS;
}

static enum rpc_diagnosis handshake(struct dial *d, int fd, const char *ca, char *why,
                                    size_t cap) {
    SSL_CTX *ctx = client_ctx(ca, why, cap);
    if (!ctx) return RPC_DIAG_TLS;
    SSL *ssl = SSL_new(ctx);
    enum rpc_diagnosis out = RPC_DIAG_TLS;
    if (!ssl) {
        snprintf(why, cap, "cannot make a TLS session");
    } else {
        SSL_set_app_data(ssl, d);
        SSL_set_fd(ssl, fd);
        if (ca) expect_host(ssl, d->host);
        ERR_clear_error();
        int r = SSL_connect(ssl);
        if (r == 1 && ca)
            out = refused_after_handshake(d, ssl, why, cap);
        else if (r == 1) // it speaks TLS, and the call was plaintext
            snprintf(why, cap, "%s speaks TLS but this call was plaintext: give the CA that "
                     "signed its certificate", d->target);
        else
            out = handshake_failed(d, ssl, r, ca, why, cap);
        SSL_free(ssl);
    }
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return out;
}

enum rpc_diagnosis rpc_diagnose(const char *target, const struct rpc_tls *tls, double timeout_s,
                                char *why, size_t cap) {
    why[0] = 0;
    struct dial d = {.target = target, .deadline = moe_clock_s() + timeout_s};
    int port;
    if (net_split(target, d.host, sizeof d.host, &port) != 0 || port <= 0) {
        snprintf(why, cap, "%s is not host:port", target);
        return RPC_DIAG_DOWN;
    }
    snprintf(d.port, sizeof d.port, "%d", port);
    int fd = dial_tcp(&d, why, cap);
    if (fd < 0) return RPC_DIAG_DOWN;
    const char *ca = tls && tls->ca_file && tls->ca_file[0] ? tls->ca_file : NULL;
    enum rpc_diagnosis out = handshake(&d, fd, ca, why, cap);
    close(fd);
    if (out == RPC_DIAG_FINE) why[0] = 0;
    return out;
}
