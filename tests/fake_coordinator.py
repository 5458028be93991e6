"""A stand-in coordinator for tests that must call a real worker's Worker service as its
coordinator would: a worker accepts RunSlot, StopJob and FenceSlot only with the credential
its coordinator handed it at registration (docs/security.md), which a real coordinator keeps
to itself. This one serves just the Cluster calls a worker makes while idle (RegisterWorker,
with the cluster token; Heartbeat and reports, with the credential it handed out), and writes
that credential where the test can read it.

  /usr/bin/python3 fake_coordinator.py PBDIR TOKENFILE ADDRFILE CREDFILE

PBDIR holds moed_pb2.py (protoc --python_out). It listens on 127.0.0.1 (a free port, written
to ADDRFILE once serving), writes CREDFILE (mode 0600) when the worker registers, and runs until
SIGTERM. CREDFILE's two lines: the credential, and the address of the registered worker's
Worker service.
"""
import os
import secrets
import signal
import sys
import threading

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
import moed_pb2 as pb  # noqa: E402

token = open(sys.argv[2]).read().strip()
addr_file, cred_file = sys.argv[3], sys.argv[4]
credential = "w-1." + secrets.token_hex(32)


def bearer(ctx):
    for k, v in ctx.invocation_metadata():
        if k == "authorization" and v.startswith("Bearer "):
            return v[7:]
    return ""


def register(req, ctx):
    if bearer(ctx) not in (token, credential):
        ctx.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong cluster token")
    fd = os.open(cred_file + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, (credential + "\n" + req.address + "\n").encode())
    os.close(fd)
    os.rename(cred_file + ".tmp", cred_file)
    return pb.RegisterResponse(worker_id="w-1", heartbeat_interval_ms=500,
                               cluster_id="fake", worker_credential=credential)


def as_worker(reply):
    def handle(req, ctx):
        if bearer(ctx) != credential:
            ctx.abort(grpc.StatusCode.UNAUTHENTICATED, "not the credential handed out")
        return reply()
    return handle


def unary(fn, req_type, reply_type):
    return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req_type.FromString,
                                               response_serializer=reply_type.SerializeToString)


handlers = {
    "RegisterWorker": unary(register, pb.RegisterRequest, pb.RegisterResponse),
    "Heartbeat": unary(as_worker(pb.HeartbeatResponse), pb.HeartbeatRequest, pb.HeartbeatResponse),
    "ReportStep": unary(as_worker(pb.StepReportResponse), pb.StepReport, pb.StepReportResponse),
    "ReportJobEnd": unary(as_worker(pb.Empty), pb.JobEndReport, pb.Empty),
    "ReportFault": unary(as_worker(pb.Empty), pb.FaultReport, pb.Empty),
    "ReportRestored": unary(as_worker(pb.Empty), pb.RestoredReport, pb.Empty),
}
server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(4))
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("moed.v1.Cluster", handlers)])
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with open(addr_file + ".tmp", "w") as f:
    f.write("127.0.0.1:%d\n" % port)
os.rename(addr_file + ".tmp", addr_file)
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: done.set())
done.wait()
server.stop(0)
