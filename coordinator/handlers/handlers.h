/*
 * handlers.h — the coordinator's RPC handlers and the table that serves them.
 *
 * Owns: one handler per method of the Jobs, Status and Cluster services (proto/moed.proto).
 * A handler decodes its request, checks what the request alone can show (fields present, in
 * range, the job and worker it names exist), calls one policy (or reads the state, for the
 * read-only views), and answers exactly once, mapping the moe_status to a gRPC code.
 *   jobs_service.c     Jobs and Status: what clients call (moectl, stock gRPC clients)
 *   cluster_service.c  Cluster: what workers call
 *   services.c         the method table: path, request type, stream or not, which token
 * The HTTP port's handlers (metrics, the live page) are in http.h and metrics.h.
 * Never: decides anything a policy decides, keeps state of its own (a stream's cursor aside),
 * exits or aborts: a bad request gets a status naming what is wrong.
 */
#ifndef MOE_COORD_HANDLERS_H
#define MOE_COORD_HANDLERS_H

#include "../../proto/rpc.h"

/* jobs_service.c */
void handle_submit_job(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);
void handle_cancel_job(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);
void handle_list_jobs(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);
void handle_get_job(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);
void handle_watch_job(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);
void handle_fetch_model(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);
void handle_list_steps(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);
void handle_list_events(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);
void handle_delete_job(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);
void handle_get_cluster(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);

/* cluster_service.c */
void handle_register_worker(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);
void handle_heartbeat(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);
void handle_report_step(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);
void handle_upload_model(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);
void handle_report_job_end(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);
void handle_report_fault(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);
void handle_report_restored(struct rpc_call *call, const ProtobufCMessage *m, void *ctx);

/* services.c: the table rpc_server_start serves (ctx: the struct coordinator *). */
extern const struct rpc_method coordinator_methods[];
extern const int coordinator_n_methods;
extern const char *const coordinator_health_names[]; // grpc.health.v1 names besides ""
extern const int coordinator_n_health_names;

#endif
