/*
 * client.h — how moectl finds the coordinator, authenticates to it, and reads its answers.
 *
 * Owns: the connection options every client command takes, their environment variables and
 * the local cluster directory behind them; opening the channel; turning a call's gRPC status
 * into moectl's exit code and one error line; printing a reply message as JSON; the few
 * readings of a reply that several commands share (a job state's name, whether it is final,
 * the events already shown).
 * Never: decides what a command shows a person (cluster.c, jobs.c, chaos.c do), or starts
 * processes.
 *
 * Include it first in a .c file: gRPC's headers (through proto/rpc.h) define _GNU_SOURCE,
 * which must come before any system header for pipe2, nftw and memmem to be declared; a
 * header that pulls in a system header (common/clock.h: <time.h>) must come after it.
 *
 * Where each setting comes from, first match wins (each setting on its own):
 *   address  --coordinator HOST:PORT   $MOED_COORDINATOR   DIR/coordinator.addr
 *   token    --token-file F            $MOED_TOKEN (the token itself), $MOED_TOKEN_FILE
 *                                      DIR/client.token (none when that file does not exist)
 *   TLS CA   --ca F                    $MOED_TLS_CA         DIR/tls/cert.pem when it exists
 *            ("" for --ca or $MOED_TLS_CA means plaintext)
 * DIR is --cluster-dir, else $MOED_CLUSTER_DIR, else $HOME/.moed/cluster.
 */
#ifndef MOECTL_CLIENT_H
#define MOECTL_CLIENT_H

#include "../common/status.h"
#include "../proto/rpc.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <limits.h>
#include <stddef.h>

/* The connection options as given on the command line (NULL: not given). */
struct client_options {
    const char *coordinator;
    const char *token_file;
    const char *ca;
    const char *cluster_dir;
};

/* getopt_long values of the connection options; CLIENT_LONG_OPTIONS goes into a command's
 * option table, client_option() consumes them in its switch's default case. */
enum { OPT_COORDINATOR = 0x100, OPT_TOKEN_FILE, OPT_CA, OPT_CLUSTER_DIR };
#define CLIENT_LONG_OPTIONS                                                                       \
    {"coordinator", required_argument, 0, OPT_COORDINATOR},                                        \
        {"token-file", required_argument, 0, OPT_TOKEN_FILE}, {"ca", required_argument, 0, OPT_CA}, \
        {"cluster-dir", required_argument, 0, OPT_CLUSTER_DIR}
#define CLIENT_OPTIONS_USAGE                                                                      \
    "[--coordinator HOST:PORT] [--token-file F] [--ca F] [--cluster-dir DIR]"

/* 1 when `opt` was a connection option (stored in *o), else 0. */
int client_option(struct client_options *o, int opt, const char *arg);

/* What most commands that talk to a coordinator take: the connection options and --json. */
struct client_args {
    struct client_options conn;
    int json;
};
/* A take() for moectl_options (ctx: a struct client_args): the connection options and 'j';
 * -1 for any other. */
int client_take_option(void *ctx, int opt, const char *arg);

/* DIR: the flag's value, else $MOED_CLUSTER_DIR, else $HOME/.moed/cluster. */
moe_status client_cluster_dir(const char *flag, char *out, size_t cap);

struct client {
    struct rpc_channel *ch;
    char target[256];
    char origin[PATH_MAX + 64]; // where the address came from, for error hints
    char ca[PATH_MAX];          // the CA the channel verifies the coordinator with ("": none)
};

/* Resolves the settings and opens the channel. Returns an exit code: 0, or after printing
 * "moectl: <what is wrong>", EXIT_BAD_INPUT (a given file unreadable) or EXIT_UNREACHABLE. */
int client_open(struct client *c, const struct client_options *o);
/* Opens a channel to a known address (cluster up, which made the credentials itself). */
int client_open_at(struct client *c, const char *target, const char *token, const char *ca_file);
/* A call that failed as `res` says: prints "moectl: <why>" and returns `code`. A call that
 * could not reach the coordinator (UNAVAILABLE, DEADLINE_EXCEEDED) is diagnosed by a dial of
 * its own (proto/diagnose.h), so that a TLS mistake is named: "TLS handshake with H:P failed:
 * hostname mismatch: ..."; otherwise the call's own message (moe_errmsg()) is printed. */
int client_fail(const struct client *c, int code, const struct rpc_result *res);
void client_close(struct client *c);

/* Blocking unary call. On failure prints "moectl: <method on target: CODE: details>" and
 * returns the exit code for it; *res (optional) gets the gRPC status either way. */
int client_call(struct client *c, const char *method, const ProtobufCMessage *request,
                const ProtobufCMessageDescriptor *response_type, ProtobufCMessage **response,
                struct rpc_result *res);

/* A paged method (ListJobs, GetCluster, GetJob: docs/protocol.md "Paging") called page by page
 * with the request's page_token, until the last page or until `limit` (0: no limit) of the
 * repeated field `items` have come (its first field counts; more, space-separated, may follow,
 * each a path through singular message fields: "slots job.bindings" gathers GetJob's
 * bindings too): one reply holding them all, with the first page's
 * summary, and next_page_token "" (or where to go on after `limit`). Fails like client_call
 * (quietly with `quiet`: only the exit code, *res and moe_errmsg()); each call has
 * timeout_s (<= 0: the 30 s of client_call). */
int client_call_pages(struct client *c, const char *method, ProtobufCMessage *request,
                      const ProtobufCMessageDescriptor *response_type, const char *items,
                      size_t limit, int quiet, ProtobufCMessage **response,
                      struct rpc_result *res, double timeout_s);

/* moectl's exit code for a gRPC status: OK 0; INVALID_ARGUMENT, NOT_FOUND, OUT_OF_RANGE,
 * ALREADY_EXISTS 2; UNAVAILABLE, DEADLINE_EXCEEDED, UNAUTHENTICATED, PERMISSION_DENIED 4;
 * anything else (FAILED_PRECONDITION, INTERNAL, ...) 1. */
int client_exit_code(grpc_status_code code);

/* A message as JSON: fields named as in proto/moed.proto, enums by their names
 * ("JOB_RUNNING"), 64-bit integers as numbers, bytes as hex, absent sub-messages left out. */
cJSON *client_json(const ProtobufCMessage *m);
/* Prints it on one line of stdout. */
void client_print_json(const ProtobufCMessage *m);

/* "RUNNING" for JOB_RUNNING, "IDLE" for WORKER_IDLE: an enum value's name without its prefix. */
const char *client_enum_name(const ProtobufCEnumDescriptor *d, int value);

/* ---- jobs and workers as the coordinator reports them ---- */

const char *client_job_state(int state); // "RUNNING" for JOB_RUNNING
int client_job_final(int state);         // SUCCEEDED, FAILED or CANCELLED: it changes no more
/* EXIT_OK, or EXIT_BAD_INPUT after saying that a job id given is empty. */
int client_need_job_id(const char *id);

struct Moed__V1__ClusterStatus;
/* GetCluster within timeout_s a page, every page, without printing: the reply with every
 * worker (free it with protobuf_c_message_free_unpacked), or NULL with *res and moe_errmsg()
 * saying why. */
struct Moed__V1__ClusterStatus *client_get_cluster(struct client *c, double timeout_s,
                                                   struct rpc_result *res);

struct Moed__V1__Event;

/* The events a command already printed (watch after a reconnect, chaos between polls): an
 * event is its time, kind and text. */
struct event_set {
    uint64_t *seen; // FNV-1a of each event
    size_t n, cap;
};
/* 1 the first time e is added (and when out of memory: better shown twice than never). */
int event_set_add(struct event_set *s, const struct Moed__V1__Event *e);
void event_set_free(struct event_set *s);

#endif
