/*
 * diagnose.h — why a channel cannot reach its target, in one sentence.
 *
 * gRPC reports a TLS mistake as "UNAVAILABLE: failed to connect to all addresses" with the
 * cause deep in its text, or, for a caller that waits for the connection, as a silent retry
 * until DEADLINE_EXCEEDED. After such a failure, rpc_diagnose dials the target itself (a TCP
 * connect and an OpenSSL handshake with the same CA as the channel, the ALPN gRPC offers, and
 * the target's host checked against the certificate as gRPC checks it) and names the cause:
 *   "TLS handshake with H:P failed: certificate verify failed (self-signed certificate): the
 *    CA given (FILE) did not sign the server's certificate"
 *   "TLS handshake with H:P failed: hostname mismatch: the server's certificate is not for H"
 *   "TLS handshake with H:P failed: the server asked for a client certificate and none was
 *    given"
 *   "TLS handshake with H:P failed: the server does not speak TLS (it serves plaintext: call it
 *    without a CA)"
 *   "H:P speaks TLS but this call was plaintext: give the CA that signed its certificate"
 *   "cannot connect to H:P: connection refused" (or "timed out", "cannot resolve H: ...")
 * Owns: that one dial (blocking, bounded by a timeout). Never: retries, or is called on a
 * daemon's loop thread (the coordinator runs it on libuv's thread pool).
 */
#ifndef MOE_PROTO_DIAGNOSE_H
#define MOE_PROTO_DIAGNOSE_H

#include "rpc.h"

enum rpc_diagnosis {
    RPC_DIAG_FINE = 0, // the dial worked as the channel would: nothing to add
    RPC_DIAG_DOWN,     // nothing answers (refused, unresolvable, timed out): it may come up
    RPC_DIAG_TLS,      // a TLS mistake on one side: retrying the same way cannot work
};

/* Dials `target` ("host:port") as a channel with `tls` (NULL or no ca_file: plaintext) would,
 * within timeout_s, and writes one sentence to `why` (empty when FINE). */
enum rpc_diagnosis rpc_diagnose(const char *target, const struct rpc_tls *tls, double timeout_s,
                                char *why, size_t cap);

#endif
