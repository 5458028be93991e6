"""A stock gRPC client that is not part of moed: Debian's python3-grpcio and the messages
protoc generates from proto/moed.proto (no stubs, no moed code). Run by cli_grpc_python.sh
against a real coordinator with a real worker:

  /usr/bin/python3 grpc_stock_client.py --pb-dir DIR --target HOST:PORT
      --client-token-file F --cluster-token-file F --coordinator-pid N --worker-pid N
      --data FILE

It reads the cluster, trains a tiny job to the end through Jobs/SubmitJob, Status/GetJob and
Status/WatchJob, then sends the bad input the issue names (garbage, truncated and oversized
messages, missing and wrong tokens, an unknown job, a malformed spec, an unknown method) and
checks that each gets an error status while the coordinator keeps answering. Exit 0 when
every check holds; each failed check prints a FAIL line.
"""
import argparse
import json
import math
import os
import sys
import threading
import time

import grpc

FAILURES = 0


def check(cond, what):
    global FAILURES
    if cond:
        print("ok   " + what)
    else:
        FAILURES += 1
        print("FAIL " + what)
    sys.stdout.flush()
    return cond


def read_token(path):
    with open(path) as f:
        return f.read().strip()


class Client:
    """Calls by method path with the generated message classes, the way any stock client
    can with nothing but the .proto file."""

    def __init__(self, pb, target, token):
        self.pb = pb
        self.target = target
        # no send limit on our side: the coordinator's own limit is what we test
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", -1),
                             ("grpc.max_receive_message_length", 16 << 20)])
        self.token = token

    def md(self, token="default"):
        token = self.token if token == "default" else token
        return [] if token is None else [("authorization", "Bearer " + token)]

    def unary(self, path, request, reply_type, token="default", timeout=10):
        call = self.channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=reply_type.FromString)
        return call(request, metadata=self.md(token), timeout=timeout)

    def stream(self, path, request, reply_type, token="default", timeout=None):
        call = self.channel.unary_stream(path, request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=reply_type.FromString)
        return call(request, metadata=self.md(token), timeout=timeout)

    def raw(self, path, payload, token="default", streaming=False, timeout=10):
        """Sends `payload` bytes as they are (identity serializers); returns the status code."""
        try:
            if streaming:
                call = self.channel.unary_stream(path, request_serializer=None,
                                                 response_deserializer=None)
                for _ in call(payload, metadata=self.md(token), timeout=timeout):
                    pass
            else:
                call = self.channel.unary_unary(path, request_serializer=None,
                                                response_deserializer=None)
                call(payload, metadata=self.md(token), timeout=timeout)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details() or ""


def expect_error(client, path, request, reply_type, code, needle, token="default", streaming=False,
                 what=""):
    try:
        if streaming:
            for _ in client.stream(path, request, reply_type, token=token, timeout=10):
                pass
        else:
            client.unary(path, request, reply_type, token=token)
        got, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        got, details = e.code(), e.details() or ""
    return check(got == code and needle in details,
                 "%s%s -> %s \"%s\" (wanted %s with \"%s\")"
                 % (path, " with " + what if what else "", got.name, details, code.name, needle))


def coordinator_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    with open("/proc/%d/stat" % pid) as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def still_serving(client, pid, after):
    """After bad input: the coordinator process lives and answers GetCluster."""
    alive = coordinator_alive(pid)
    try:
        st = client.unary("/moed.v1.Status/GetCluster", client.pb.GetClusterRequest(),
                          client.pb.ClusterStatus)
        answered = st.coordinator_address == client.target
    except grpc.RpcError as e:
        answered = False
        print("     GetCluster: %s %s" % (e.code().name, e.details()))
    check(alive and answered, "after %s: the coordinator (pid %d) is alive and answers GetCluster"
          % (after, pid))


def wait_for_worker(client, worker_pid, seconds=60):
    deadline = time.time() + seconds
    st = None
    while time.time() < deadline:
        st = client.unary("/moed.v1.Status/GetCluster", client.pb.GetClusterRequest(),
                          client.pb.ClusterStatus)
        if any(w.pid == worker_pid for w in st.workers):
            return st
        time.sleep(0.2)
    return st


def check_cluster(client, args):
    pb = client.pb
    st = wait_for_worker(client, args.worker_pid)
    now_ms = time.time() * 1000
    check(st.coordinator_version.count(".") == 2 and st.coordinator_version[0].isdigit(),
          "GetCluster: coordinator_version %r looks like a version" % st.coordinator_version)
    check(st.coordinator_address == args.target,
          "GetCluster: coordinator_address %r is the address dialed %r"
          % (st.coordinator_address, args.target))
    check(0 < st.started_unix_ms <= now_ms + 1000 and now_ms - st.started_unix_ms < 600e3,
          "GetCluster: started_unix_ms %d is within the last 10 minutes" % st.started_unix_ms)
    check(0 < st.uptime_seconds < 600, "GetCluster: uptime_seconds %.3f" % st.uptime_seconds)
    check(st.heartbeat_timeout_ms > 0,
          "GetCluster: heartbeat_timeout_ms %d" % st.heartbeat_timeout_ms)
    mine = [w for w in st.workers if w.pid == args.worker_pid]
    if not check(len(mine) == 1, "GetCluster: the worker with pid %d is listed once (workers: %s)"
                 % (args.worker_pid, [(w.worker_id, w.pid) for w in st.workers])):
        return None
    w = mine[0]
    check(w.state == pb.WORKER_IDLE, "worker %s: state %s is WORKER_IDLE"
          % (w.worker_id, pb.WorkerState.Name(w.state)))
    check(w.worker_id.startswith("w-"), "worker id %r" % w.worker_id)
    check(":" in w.address and w.address != args.target, "worker address %r" % w.address)
    check(w.version == st.coordinator_version, "worker version %r" % w.version)
    check(w.cpus >= 1 and w.host != "", "worker cpus %d, host %r" % (w.cpus, w.host))
    check(0 <= w.ms_since_heartbeat < st.heartbeat_timeout_ms,
          "worker heartbeat %d ms ago (timeout %d ms)"
          % (w.ms_since_heartbeat, st.heartbeat_timeout_ms))
    check(abs(now_ms - w.last_heartbeat_unix_ms) < st.heartbeat_timeout_ms + 1000,
          "worker last_heartbeat_unix_ms %d is recent" % w.last_heartbeat_unix_ms)
    check(w.job_id == "", "worker runs no job yet")
    pods = [p for p in st.pods if p.pod == w.pod]
    check(len(pods) == 1 and pods[0].healthy and pods[0].alive == pods[0].workers >= 1,
          "pod %d: %s" % (w.pod, [(p.pod, p.workers, p.alive, p.healthy) for p in st.pods]))
    check(st.jobs_running == 0 and st.jobs_queued == 0, "no job queued or running yet")
    return st


SPEC = """
name: stock-client
model:
  d_model: 32
  layers: 1
  heads: 2
  seq_len: 32
  experts: 4
  d_ff: 64
router:
  top_k: 2
data:
  sources:
    - path: %s
run:
  steps: 20
  batch_size: 4
  log_every: 5
"""


def watch(client, job_id, out):
    """Status/WatchJob to its end, in a thread; `out` gets the updates and the outcome."""
    try:
        for u in client.stream("/moed.v1.Status/WatchJob", client.pb.WatchJobRequest(job_id=job_id),
                               client.pb.JobUpdate, timeout=300):
            out["updates"].append(u)
        out["code"] = grpc.StatusCode.OK
    except grpc.RpcError as e:
        out["code"] = e.code()
        out["details"] = e.details()


def wait_state(client, job_id, states, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        js = client.unary("/moed.v1.Status/GetJob", client.pb.JobRef(job_id=job_id),
                          client.pb.JobStatus)
        if js.job.state in states:
            return js
        time.sleep(0.05)
    return js


def run_job(client, args):
    pb = client.pb
    # The 20-step job takes ~50 ms, less than a watch takes to start. So a long job holds the
    # only worker first: the job under test queues behind it, the watch is attached while it
    # is QUEUED, and only then is the blocker cancelled. Every state change is then streamed.
    blocker = client.unary("/moed.v1.Jobs/SubmitJob", pb.SubmitJobRequest(
        spec=(SPEC % args.data).replace("steps: 20", "steps: 1000000")
        .replace("stock-client", "stock-client-blocker")), pb.JobInfo)
    held = wait_state(client, blocker.job_id, (pb.JOB_RUNNING,))
    check(held.job.state == pb.JOB_RUNNING, "SubmitJob: the blocker %s is %s"
          % (blocker.job_id, pb.JobState.Name(held.job.state)))
    info = client.unary("/moed.v1.Jobs/SubmitJob", pb.SubmitJobRequest(spec=SPEC % args.data),
                        pb.JobInfo)
    check(info.job_id.startswith("job-") and info.total_steps == 20 and info.name == "stock-client"
          and info.state == pb.JOB_QUEUED,
          "SubmitJob: %s %s behind the blocker, %d steps"
          % (info.job_id, pb.JobState.Name(info.state), info.total_steps))
    watched = {"updates": [], "code": None}
    watcher = threading.Thread(target=watch, args=(client, info.job_id, watched))
    watcher.start()
    deadline = time.time() + 60
    while not watched["updates"] and watcher.is_alive() and time.time() < deadline:
        time.sleep(0.01)
    check(watched["updates"] and watched["updates"][0].job.state == pb.JOB_QUEUED,
          "WatchJob: the first update shows the job QUEUED")
    client.unary("/moed.v1.Jobs/CancelJob", pb.JobRef(job_id=blocker.job_id), pb.JobInfo)
    gone = wait_state(client, blocker.job_id, (pb.JOB_CANCELLED, pb.JOB_FAILED, pb.JOB_SUCCEEDED))
    check(gone.job.state == pb.JOB_CANCELLED, "CancelJob: the blocker is %s"
          % pb.JobState.Name(gone.job.state))

    deadline = time.time() + 300
    js = None
    while time.time() < deadline:
        js = client.unary("/moed.v1.Status/GetJob", pb.JobRef(job_id=info.job_id), pb.JobStatus)
        if js.job.state in (pb.JOB_SUCCEEDED, pb.JOB_FAILED, pb.JOB_CANCELLED):
            break
        time.sleep(0.1)
    job = js.job
    check(job.state == pb.JOB_SUCCEEDED, "GetJob: %s is %s %s"
          % (job.job_id, pb.JobState.Name(job.state), job.error))
    check(job.step == job.total_steps == 20, "GetJob: step %d of %d" % (job.step, job.total_steps))
    check(math.isfinite(job.loss) and job.loss > 0,
          "GetJob: loss %r is finite and positive" % job.loss)
    check(job.created_unix_ms <= job.started_unix_ms <= job.finished_unix_ms,
          "GetJob: created <= started <= finished (%d, %d, %d)"
          % (job.created_unix_ms, job.started_unix_ms, job.finished_unix_ms))
    check(job.model_bytes > 0, "GetJob: the model has %d bytes" % job.model_bytes)
    check(len(job.bindings) == 1 and job.bindings[0].worker_id.startswith("w-"),
          "GetJob: bound to %s" % [(b.pod, b.slot, b.worker_id) for b in job.bindings])
    last = js.last
    check(last.step == 20 and math.isfinite(last.loss) and last.loss > 0 and last.tokens > 0
          and last.seconds > 0, "GetJob: last step %d, loss %.4f, %d tokens in %.4f s"
          % (last.step, last.loss, last.tokens, last.seconds))
    load = list(last.expert_load)
    check(len(load) == 4 and abs(sum(load) - 1) < 1e-3 and min(load) >= 0,
          "GetJob: expert_load %s has 4 shares summing to 1" % ["%.3f" % x for x in load])
    kinds = [e.kind for e in js.events]
    check(all(k in kinds for k in ("submitted", "scheduled", "succeeded")),
          "GetJob: events %s include submitted, scheduled, succeeded" % kinds)
    check(kinds.index("submitted") < kinds.index("scheduled") < kinds.index("succeeded")
          if all(k in kinds for k in ("submitted", "scheduled", "succeeded")) else False,
          "GetJob: the events are in order")
    spec = json.loads(js.spec_json)
    check(spec["model"]["d_model"] == 32 and spec["run"]["steps"] == 20,
          "GetJob: spec_json holds the submitted spec")
    check(len(js.slots) == 1 and js.slots[0].worker_id == job.bindings[0].worker_id
          and js.slots[0].ended and js.slots[0].ok and js.slots[0].step == 20,
          "GetJob: the 1 x 1 mesh's slot: %s" % [(x.pod, x.slot, x.worker_id, x.step) for x in js.slots])
    check(job.epoch == 1 and job.backend == "tcp", "GetJob: epoch %d, backend %s"
          % (job.epoch, job.backend))
    curve = client.unary("/moed.v1.Jobs/ListSteps", pb.ListStepsRequest(job_id=job.job_id),
                         pb.ListStepsResponse)
    check([m.step for m in curve.steps] == list(range(1, 21)) and curve.steps[-1].loss == last.loss,
          "ListSteps: the stored steps 1..20, the last with GetJob's loss")
    tail = client.unary("/moed.v1.Status/ListSteps",
                        pb.ListStepsRequest(job_id=job.job_id, from_step=18, max_steps=2),
                        pb.ListStepsResponse)
    check([m.step for m in tail.steps] == [18, 19], "Status/ListSteps: from_step 18, max_steps 2: 18, 19")

    watcher.join(60)
    ups = watched["updates"]
    check(not watcher.is_alive() and watched["code"] == grpc.StatusCode.OK,
          "WatchJob: the stream ended with %s" % watched["code"])
    check(len(ups) >= 2 and ups[-1].job.state == pb.JOB_SUCCEEDED and ups[-1].job.step == 20,
          "WatchJob: %d updates, the last one SUCCEEDED at step %d"
          % (len(ups), ups[-1].job.step if ups else -1))
    steps = [u.job.step for u in ups]
    check(steps == sorted(steps), "WatchJob: steps never go back (%s)" % steps[:30])
    seen = [e.kind for u in ups for e in u.new_events]
    check("succeeded" in seen, "WatchJob: the events streamed include succeeded (%s)" % seen)
    # a watch of a finished job is its picture and the end
    ups = list(client.stream("/moed.v1.Status/WatchJob", pb.WatchJobRequest(job_id=job.job_id),
                             pb.JobUpdate, timeout=10))
    check(len(ups) == 1 and ups[0].job.state == pb.JOB_SUCCEEDED,
          "WatchJob of an ended job: one update, then OK")

    st = client.unary("/moed.v1.Status/GetCluster", pb.GetClusterRequest(), pb.ClusterStatus)
    w = [w for w in st.workers if w.pid == args.worker_pid]
    check(w and w[0].state == pb.WORKER_IDLE and w[0].job_id == "" and st.jobs_total >= 1,
          "GetCluster after the job: the worker is IDLE again, %d job(s) in total" % st.jobs_total)
    return job


def bad_input(client, cluster, args):
    pb = client.pb
    pid = args.coordinator_pid
    before = client.unary("/moed.v1.Jobs/ListJobs", pb.ListJobsRequest(), pb.ListJobsResponse)
    n_jobs = len(before.jobs)
    # every Cluster call but a first registration needs a worker's own credential: join as one
    # (at an address nobody serves; it never heartbeats and goes DEAD)
    joined = cluster.unary("/moed.v1.Cluster/RegisterWorker",
                           pb.RegisterRequest(address="127.0.0.1:1", version="stock"),
                           pb.RegisterResponse)
    check(joined.worker_credential.startswith(joined.worker_id + ".") and
          len(joined.worker_credential) == len(joined.worker_id) + 65,
          "RegisterWorker with the cluster token: %s and its own credential" % joined.worker_id)
    member = Client(pb, args.target, joined.worker_credential)

    # bytes that are no protobuf at all: a varint that never ends, then a bad wire type
    garbage = b"\xff" * 11 + b"\x0f\x00\x13\x37garbage"
    unary_paths = ["/moed.v1.Jobs/SubmitJob", "/moed.v1.Jobs/GetJob", "/moed.v1.Jobs/CancelJob",
                   "/moed.v1.Jobs/ListJobs", "/moed.v1.Status/GetJob", "/moed.v1.Status/GetCluster"]
    stream_paths = ["/moed.v1.Status/WatchJob", "/moed.v1.Jobs/WatchJob",
                    "/moed.v1.Jobs/FetchModel"]
    for path in unary_paths + stream_paths:
        code, det = client.raw(path, garbage, streaming=path in stream_paths)
        check(code == grpc.StatusCode.INVALID_ARGUMENT,
              "garbage to %s -> %s \"%s\"" % (path, code.name, det))
    for path in ["/moed.v1.Cluster/Heartbeat", "/moed.v1.Cluster/ReportStep",
                 "/moed.v1.Cluster/UploadModel", "/moed.v1.Cluster/RegisterWorker"]:
        code, det = member.raw(path, garbage)
        check(code == grpc.StatusCode.INVALID_ARGUMENT, "garbage to %s -> %s" % (path, code.name))
    code, det = cluster.raw("/moed.v1.Cluster/RegisterWorker", garbage)
    check(code == grpc.StatusCode.INVALID_ARGUMENT,
          "garbage to RegisterWorker with the cluster token -> %s" % code.name)
    still_serving(client, pid, "garbage")

    # valid messages cut short
    whole = pb.SubmitJobRequest(spec=SPEC % args.data,
                                overrides=["run.steps=3"]).SerializeToString()
    for cut in (1, 7, len(whole) // 2):
        code, det = client.raw("/moed.v1.Jobs/SubmitJob", whole[:-cut])
        check(code == grpc.StatusCode.INVALID_ARGUMENT,
              "SubmitJob cut by %d bytes -> %s \"%s\"" % (cut, code.name, det))
    ref = pb.JobRef(job_id="job-1").SerializeToString()
    code, det = client.raw("/moed.v1.Status/GetJob", ref[:-2])
    check(code == grpc.StatusCode.INVALID_ARGUMENT, "GetJob cut short -> %s" % code.name)
    report = pb.StepReport(worker_id=joined.worker_id, job_id="job-1",
                           metrics=[pb.StepMetrics(step=1, loss=1.0)]).SerializeToString()
    code, det = member.raw("/moed.v1.Cluster/ReportStep", report[:-3])
    check(code == grpc.StatusCode.INVALID_ARGUMENT, "ReportStep cut short -> %s" % code.name)
    still_serving(client, pid, "truncated messages")

    # bigger than the coordinator's 4 MiB limit
    huge_spec = pb.SubmitJobRequest(spec="name: x\n#" + "y" * (5 << 20)).SerializeToString()
    code, det = client.raw("/moed.v1.Jobs/SubmitJob", huge_spec)
    check(code == grpc.StatusCode.RESOURCE_EXHAUSTED,
          "a 5 MiB SubmitJob -> %s \"%s\"" % (code.name, det))
    huge = b"\x0a" + b"\xff\xff\xff\x02" + b"z" * (5 << 20)
    for path in ["/moed.v1.Status/GetJob", "/moed.v1.Status/GetCluster", "/moed.v1.Jobs/ListJobs"]:
        code, det = client.raw(path, huge)
        check(code == grpc.StatusCode.RESOURCE_EXHAUSTED, "5 MiB to %s -> %s" % (path, code.name))
    code, det = client.raw("/moed.v1.Status/WatchJob", huge, streaming=True)
    check(code == grpc.StatusCode.RESOURCE_EXHAUSTED, "5 MiB to WatchJob -> %s" % code.name)
    chunk = pb.ModelChunk(job_id="job-1", offset=0, data=b"\0" * (5 << 20),
                          total_bytes=5 << 20).SerializeToString()
    code, det = member.raw("/moed.v1.Cluster/UploadModel", chunk)
    check(code == grpc.StatusCode.RESOURCE_EXHAUSTED, "a 5 MiB UploadModel -> %s" % code.name)
    still_serving(client, pid, "oversized messages")

    # tokens
    for token, what in ((None, "no token"), ("wrong-" + client.token, "a wrong token"),
                        (client.token[:-1], "a token cut short"),
                        (cluster.token, "the cluster token")):
        expect_error(client, "/moed.v1.Status/GetCluster", pb.GetClusterRequest(), pb.ClusterStatus,
                     grpc.StatusCode.UNAUTHENTICATED, "token", token=token, what=what)
        expect_error(client, "/moed.v1.Status/GetJob", pb.JobRef(job_id="job-1"), pb.JobStatus,
                     grpc.StatusCode.UNAUTHENTICATED, "token", token=token, what=what)
        expect_error(client, "/moed.v1.Jobs/SubmitJob", pb.SubmitJobRequest(spec=SPEC % args.data),
                     pb.JobInfo, grpc.StatusCode.UNAUTHENTICATED, "token", token=token, what=what)
        expect_error(client, "/moed.v1.Status/WatchJob", pb.WatchJobRequest(job_id="job-1"),
                     pb.JobUpdate, grpc.StatusCode.UNAUTHENTICATED, "token", token=token,
                     streaming=True, what=what)
    for token, what in ((None, "no token"), (client.token, "the client token")):
        expect_error(client, "/moed.v1.Cluster/RegisterWorker",
                     pb.RegisterRequest(address="127.0.0.1:1", version="x"), pb.RegisterResponse,
                     grpc.StatusCode.UNAUTHENTICATED, "cluster token", token=token, what=what)
    for token, what in ((cluster.token, "the cluster token"), (None, "no token"),
                        (joined.worker_credential[:-1], "a credential cut short")):
        expect_error(member, "/moed.v1.Cluster/Heartbeat",
                     pb.HeartbeatRequest(worker_id=joined.worker_id), pb.HeartbeatResponse,
                     grpc.StatusCode.UNAUTHENTICATED, "credential", token=token, what=what)
    code, det = client.raw("/moed.v1.Status/GetCluster", garbage, token=None)
    check(code == grpc.StatusCode.UNAUTHENTICATED, "garbage without a token -> %s" % code.name)
    still_serving(client, pid, "calls without the right token")

    # unknown jobs
    for path, reply, streaming in (("/moed.v1.Status/GetJob", pb.JobStatus, False),
                                   ("/moed.v1.Jobs/GetJob", pb.JobStatus, False),
                                   ("/moed.v1.Jobs/CancelJob", pb.JobInfo, False),
                                   ("/moed.v1.Status/WatchJob", pb.JobUpdate, True),
                                   ("/moed.v1.Jobs/FetchModel", pb.ModelChunk, True)):
        req = (pb.WatchJobRequest(job_id="job-999999") if "WatchJob" in path
               else pb.JobRef(job_id="job-999999"))
        expect_error(client, path, req, reply, grpc.StatusCode.NOT_FOUND, "job-999999",
                     streaming=streaming)
    expect_error(client, "/moed.v1.Status/GetJob", pb.JobRef(job_id=""), pb.JobStatus,
                 grpc.StatusCode.NOT_FOUND, "no job")
    still_serving(client, pid, "unknown jobs")

    # malformed specs: INVALID_ARGUMENT naming the field, nothing stored
    good = SPEC % args.data
    bad_specs = [
        (good.replace("top_k: 2", "top_k: 5"), [], "router.top_k"),
        (good.replace("d_model: 32", "d_modle: 32"), [], "d_modle"),
        (good.replace("steps: 20", "steps: lots"), [], "run.steps"),
        (good.replace("heads: 2", "heads: 3"), [], "heads"),
        # (a missing data path is not among them: the coordinator never looks at paths, which
        # are the workers', under their data roots; such a job fails at RunSlot instead)
        (good, ["model.experts=-4"], "model.experts"),
        (good, ["run.batch_size"], "run.batch_size"),
        ("model: [unclosed\n  - :", [], "spec"),
        ("", [], "data.sources"),
    ]
    for spec, overrides, needle in bad_specs:
        expect_error(client, "/moed.v1.Jobs/SubmitJob",
                     pb.SubmitJobRequest(spec=spec, overrides=overrides), pb.JobInfo,
                     grpc.StatusCode.INVALID_ARGUMENT, needle)
    after = client.unary("/moed.v1.Jobs/ListJobs", pb.ListJobsRequest(), pb.ListJobsResponse)
    check([j.job_id for j in after.jobs] == [j.job_id for j in before.jobs],
          "ListJobs after the bad input: still %d job(s), nothing new stored" % n_jobs)
    st = client.unary("/moed.v1.Status/GetCluster", pb.GetClusterRequest(), pb.ClusterStatus)
    check(st.jobs_total == n_jobs, "GetCluster: jobs_total %d" % st.jobs_total)
    still_serving(client, pid, "malformed specs")

    # unknown methods and services
    for path in ("/moed.v1.Status/GetEverything", "/moed.v1.Nope/GetCluster",
                 "/grpc.health.v1.Health/List"):  # Check, Watch: served
        code, det = client.raw(path, b"")
        check(code == grpc.StatusCode.UNIMPLEMENTED, "%s -> %s \"%s\"" % (path, code.name, det))
    code, det = client.raw("/moed.v1.Status/Nope", garbage, token=None)
    check(code == grpc.StatusCode.UNIMPLEMENTED, "garbage to an unknown method -> %s" % code.name)
    still_serving(client, pid, "unknown methods")

    # the job still reads the same after all of it
    if before.jobs:
        js = client.unary("/moed.v1.Status/GetJob", pb.JobRef(job_id=before.jobs[-1].job_id),
                          pb.JobStatus)
        check(js.job.state == before.jobs[-1].state and js.job.step == before.jobs[-1].step,
              "%s is unchanged" % js.job.job_id)
    member.channel.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pb-dir", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--client-token-file", required=True)
    ap.add_argument("--cluster-token-file", required=True)
    ap.add_argument("--coordinator-pid", type=int, required=True)
    ap.add_argument("--worker-pid", type=int, required=True)
    ap.add_argument("--data", required=True)
    args = ap.parse_args()
    sys.path.insert(0, args.pb_dir)
    import moed_pb2 as pb

    print("grpcio %s, protobuf messages from %s/moed_pb2.py" % (grpc.__version__, args.pb_dir))
    client = Client(pb, args.target, read_token(args.client_token_file))
    cluster = Client(pb, args.target, read_token(args.cluster_token_file))
    if check_cluster(client, args) is not None:
        run_job(client, args)
    bad_input(client, cluster, args)
    still_serving(client, args.coordinator_pid, "everything")
    client.channel.close()
    cluster.channel.close()
    if FAILURES:
        print("grpc_stock_client: %d check(s) failed" % FAILURES)
        return 1
    print("grpc_stock_client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
