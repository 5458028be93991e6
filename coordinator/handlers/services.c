/*
 * services.c — which handler serves which method, with which request type and token (see
 * handlers.h). tests/test_rpc.c holds this table against proto/moed.proto.
 */
#include "handlers.h"

#include "../../proto/health.h"
#include "../../proto/methods.h"
#include "proto/moed.pb-c.h"

#define CLIENT(path, type, kind, handler) {path, &type, kind, RPC_AUTH_CLIENT, handler}
/* RegisterWorker: the cluster token (a new worker) or the worker's own credential (it again);
 * every other Cluster call: the calling worker's own credential only (docs/protocol.md). */
#define JOIN(path, type, handler) {path, &type, RPC_UNARY, RPC_AUTH_CLUSTER, handler}
#define CLUSTER(path, type, handler) {path, &type, RPC_UNARY, RPC_AUTH_IDENTITY, handler}

const struct rpc_method coordinator_methods[] = {
    CLIENT(RPC_JOBS_SUBMIT_JOB, moed__v1__submit_job_request__descriptor, RPC_UNARY, handle_submit_job),
    CLIENT(RPC_JOBS_CANCEL_JOB, moed__v1__job_ref__descriptor, RPC_UNARY, handle_cancel_job),
    CLIENT(RPC_JOBS_LIST_JOBS, moed__v1__list_jobs_request__descriptor, RPC_UNARY, handle_list_jobs),
    CLIENT(RPC_JOBS_GET_JOB, moed__v1__job_ref__descriptor, RPC_UNARY, handle_get_job),
    CLIENT(RPC_JOBS_WATCH_JOB, moed__v1__watch_job_request__descriptor, RPC_SERVER_STREAM, handle_watch_job),
    CLIENT(RPC_JOBS_FETCH_MODEL, moed__v1__job_ref__descriptor, RPC_SERVER_STREAM, handle_fetch_model),
    CLIENT(RPC_JOBS_LIST_STEPS, moed__v1__list_steps_request__descriptor, RPC_UNARY, handle_list_steps),
    CLIENT(RPC_JOBS_DELETE_JOB, moed__v1__job_ref__descriptor, RPC_UNARY, handle_delete_job),
    CLIENT(RPC_JOBS_LIST_EVENTS, moed__v1__list_events_request__descriptor, RPC_UNARY, handle_list_events),
    CLIENT(RPC_STATUS_GET_CLUSTER, moed__v1__get_cluster_request__descriptor, RPC_UNARY, handle_get_cluster),
    CLIENT(RPC_STATUS_GET_JOB, moed__v1__job_ref__descriptor, RPC_UNARY, handle_get_job),
    CLIENT(RPC_STATUS_WATCH_JOB, moed__v1__watch_job_request__descriptor, RPC_SERVER_STREAM, handle_watch_job),
    CLIENT(RPC_STATUS_LIST_STEPS, moed__v1__list_steps_request__descriptor, RPC_UNARY, handle_list_steps),
    CLIENT(RPC_STATUS_LIST_EVENTS, moed__v1__list_events_request__descriptor, RPC_UNARY, handle_list_events),
    JOIN(RPC_CLUSTER_REGISTER_WORKER, moed__v1__register_request__descriptor, handle_register_worker),
    CLUSTER(RPC_CLUSTER_HEARTBEAT, moed__v1__heartbeat_request__descriptor, handle_heartbeat),
    CLUSTER(RPC_CLUSTER_REPORT_STEP, moed__v1__step_report__descriptor, handle_report_step),
    CLUSTER(RPC_CLUSTER_UPLOAD_MODEL, moed__v1__model_chunk__descriptor, handle_upload_model),
    CLUSTER(RPC_CLUSTER_REPORT_JOB_END, moed__v1__job_end_report__descriptor, handle_report_job_end),
    CLUSTER(RPC_CLUSTER_REPORT_FAULT, moed__v1__fault_report__descriptor, handle_report_fault),
    CLUSTER(RPC_CLUSTER_REPORT_RESTORED, moed__v1__restored_report__descriptor, handle_report_restored),
    RPC_HEALTH_METHODS, // no token: stock probes send none (proto/health.h)
};
const int coordinator_n_methods = (int)(sizeof coordinator_methods / sizeof coordinator_methods[0]);

/* The names grpc.health.v1 answers for besides "": the services above, all served or not
 * together (docs/operations.md "Health"). */
const char *const coordinator_health_names[] = {"moed.v1.Jobs", "moed.v1.Status",
                                                "moed.v1.Cluster"};
const int coordinator_n_health_names =
    (int)(sizeof coordinator_health_names / sizeof coordinator_health_names[0]);
