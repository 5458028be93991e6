/*
 * methods.h — the path of every RPC in proto/moed.proto, in one place.
 *
 * Owns: the "/package.Service/Method" strings that servers register and clients call. A path
 * is written nowhere else; tests/test_rpc.c checks every one against the service descriptors
 * protoc-c generates from the .proto, so a renamed method fails the build's tests, not a
 * cluster at run time.
 * Never: says who may call a method (the method tables of the servers do: RPC_AUTH_*).
 */
#ifndef MOE_PROTO_METHODS_H
#define MOE_PROTO_METHODS_H

/* Jobs: clients (moectl) submit, follow and fetch jobs. Client token. */
#define RPC_JOBS_SUBMIT_JOB "/moed.v1.Jobs/SubmitJob"
#define RPC_JOBS_CANCEL_JOB "/moed.v1.Jobs/CancelJob"
#define RPC_JOBS_LIST_JOBS "/moed.v1.Jobs/ListJobs"
#define RPC_JOBS_GET_JOB "/moed.v1.Jobs/GetJob"
#define RPC_JOBS_WATCH_JOB "/moed.v1.Jobs/WatchJob"
#define RPC_JOBS_FETCH_MODEL "/moed.v1.Jobs/FetchModel"
#define RPC_JOBS_LIST_STEPS "/moed.v1.Jobs/ListSteps"
#define RPC_JOBS_DELETE_JOB "/moed.v1.Jobs/DeleteJob"
#define RPC_JOBS_LIST_EVENTS "/moed.v1.Jobs/ListEvents"

/* Status: read-only views for any gRPC client. Client token. */
#define RPC_STATUS_GET_CLUSTER "/moed.v1.Status/GetCluster"
#define RPC_STATUS_GET_JOB "/moed.v1.Status/GetJob"
#define RPC_STATUS_WATCH_JOB "/moed.v1.Status/WatchJob"
#define RPC_STATUS_LIST_STEPS "/moed.v1.Status/ListSteps"
#define RPC_STATUS_LIST_EVENTS "/moed.v1.Status/ListEvents"

/* Cluster: workers to the coordinator. Cluster token. */
#define RPC_CLUSTER_REGISTER_WORKER "/moed.v1.Cluster/RegisterWorker"
#define RPC_CLUSTER_HEARTBEAT "/moed.v1.Cluster/Heartbeat"
#define RPC_CLUSTER_REPORT_STEP "/moed.v1.Cluster/ReportStep"
#define RPC_CLUSTER_UPLOAD_MODEL "/moed.v1.Cluster/UploadModel"
#define RPC_CLUSTER_REPORT_JOB_END "/moed.v1.Cluster/ReportJobEnd"
#define RPC_CLUSTER_REPORT_FAULT "/moed.v1.Cluster/ReportFault"
#define RPC_CLUSTER_REPORT_RESTORED "/moed.v1.Cluster/ReportRestored"

/* Worker: the coordinator (and moectl chaos) to a worker. Cluster token. */
#define RPC_WORKER_RUN_SLOT "/moed.v1.Worker/RunSlot"
#define RPC_WORKER_STOP_JOB "/moed.v1.Worker/StopJob"
#define RPC_WORKER_FENCE_SLOT "/moed.v1.Worker/FenceSlot"
#define RPC_WORKER_INJECT_FAULT "/moed.v1.Worker/InjectFault"
#define RPC_WORKER_EXPORT_STATE "/moed.v1.Worker/ExportState"

#endif
