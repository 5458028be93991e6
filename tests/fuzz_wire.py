"""Fuzzes a real local cluster's wire: every RPC in proto/methods.h and the data-plane
handshake. Run by tests/cli_fuzz.sh (which starts the cluster, and after this checks that a
real job still succeeds); by hand, against a fresh cluster:

  /usr/bin/python3 fuzz_wire.py --pb-dir DIR --cluster-dir DIR --methods proto/methods.h
      --spec SPEC [--seed N] [--inputs N] [--conns N] [--out DIR] [--verbose]
      [--only PATH [--index I]]

Each input is a pure function of (seed, method, index): --only PATH --index I sends that one
input again. Inputs per method (--inputs, default $MOE_FUZZ_INPUTS or 300) are drawn from:
purely random bytes; valid messages built with the classes protoc generates from
proto/moed.proto, with real job and worker ids, then mutated at the byte level (bit flips,
truncation, duplicated fields, varints padded to 10 bytes, huge length prefixes, nested
unknown fields and groups, spliced junk); fields encoded by hand with hostile values
(negative and huge ints, NaN and infinities, invalid UTF-8, giant strings up to the 4 MiB
limit, unknown enum values, other jobs' and workers' ids); specs (SubmitJob, RunSlot) with
hostile values and deep nesting; and any of these with a wrong, missing or other service's
credential. A long job runs meanwhile, so that watches stream and fences, stops and faults
find a job to act on. Streams (WatchJob, FetchModel) get short deadlines, and are then cut
short from four threads at once; the gRPC ports also get bytes that are not HTTP/2.

Any answer is fine except: a daemon that dies, a call that outlives its deadline by more than
a margin (or a unary call that times out at all: handlers answer at once), or INTERNAL /
UNKNOWN (a crash path or a handler that did not answer). Each failure prints the method, the
seed and the input index, and saves the input as hex under --out.

The data plane: raw TCP connections to every worker's data-plane listeners with random bytes,
handshake messages (both the v1 layout of worker/comm/handshake.c and one 32 bytes longer, a
MAC'd first message) built plausibly then mutated and truncated, immediately closed, reset,
half-closed and silently held connections; first while the workers are idle, then while a
real 1 x 2 job forms its mesh (some planted before it is submitted).
"""
import argparse
import json
import os
import random
import re
import socket
import struct
import sys
import threading
import time

import grpc

FAILURES = []
NOTES = []

# Who may call what, as (service -> credential name). A credential name is looked up in
# Fuzzer.creds, whose values are metadata lists. When the coordinator hands out per-worker
# credentials (RegisterResponse field 4) "cluster" calls carry the fuzzer's own worker
# credential instead of the cluster token; change this table when the rules change.
SERVICE_CREDENTIAL = {
    "Jobs": "client",
    "Status": "client",
    "Cluster": "worker",   # the fuzzer's own registered identity (falls back to the cluster token)
    "Worker": "coordinator",  # a worker's credential, which only its coordinator presents: the
                              # --worker-under-test's (from a stand-in coordinator), else none
}
# Answers that are never acceptable (a crash path, or a handler that never answered).
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# How long a call may outlive its own deadline before it counts as a hang.
HANG_MARGIN_S = 10.0
# The job that forms its mesh under data-plane fuzzing must SUCCEED (True), or only end
# (False): the handshake authenticates before it answers, so no stranger's bytes can fail it.
MESH_JOB_MUST_SUCCEED = True
UNARY_DEADLINE_S = 20.0

# Field values a real client would send, by field name: filled in from the live cluster.
PLAUSIBLE = {}

INTS = [0, 1, -1, 2, 3, 7, 64, 255, 4096, 10000, 10001, 2**31 - 1, -2**31, 2**31, 2**32 - 1,
        2**32, 2**53 + 1, 2**63 - 1, -2**63]
UINTS = [0, 1, 2, 3, 255, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1]
FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 5e-324, 1e308, -1e308, float("nan"), float("inf"),
          float("-inf")]
FLOATS32 = [0.0, -0.0, 1.0, -1.0, 0.25, 1e-45, 3.4e38, -3.4e38, float("nan"), float("inf"),
            float("-inf")]
STRINGS = [b"", b"x", b"job-", b"w-", b"job-0", b"job-999999", b"w-999999", b"../../etc/passwd",
           b"/proc/self/environ", b"%s%n%s%n", b"\x00", b"a\x00b", b"\xff\xfe\xfd",
           b"\xc3\x28", b"\xed\xa0\x80", "\u202e\u00e9\U0001f600".encode(), b"127.0.0.1:0",
           b"127.0.0.1:1", b"[::1]:99999", b":", b"host:port:extra", b"tcp", b"mpi", b"nccl",
           b"cut", b"flip", b"{}", b"[]", b"null", b"{\"model\":", b"-", b"9" * 40]


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL " + what)
    else:
        print("ok   " + what)
    sys.stdout.flush()
    return cond


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


# ---- the wire format, by hand ----------------------------------------------------------------

def varint(v, pad=0):
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v or pad:
            out.append(b | 0x80)
        else:
            out.append(b)
            break
        if not v:
            for _ in range(pad - 1):
                out.append(0x80)
            out.append(0x00)
            break
    return bytes(out)


def tag(num, wt, pad=0):
    return varint((num << 3) | wt, pad)


def ld(num, payload, pad=0):
    return tag(num, 2) + varint(len(payload), pad) + payload


def parse_fields(buf):
    """Top-level fields of a well-formed message: (start, end, num, wt, value_start)."""
    out, i = [], 0
    try:
        while i < len(buf):
            start = i
            key, i = read_varint(buf, i)
            num, wt = key >> 3, key & 7
            vstart = i
            if wt == 0:
                _, i = read_varint(buf, i)
            elif wt == 1:
                i += 8
            elif wt == 5:
                i += 4
            elif wt == 2:
                n, i = read_varint(buf, i)
                vstart = i
                i += n
            else:
                break
            if i > len(buf):
                break
            out.append((start, i, num, wt, vstart))
    except IndexError:
        pass
    return out


def read_varint(buf, i):
    shift = v = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


# ---- inputs ----------------------------------------------------------------------------------

FD = None  # google.protobuf.descriptor.FieldDescriptor, set in main


def hostile_scalar(rng, f, name):
    """One field's encoded value(s), hostile or plausible."""
    T = FD
    t = f.type
    if t in (T.TYPE_STRING, T.TYPE_BYTES):
        r = rng.random()
        if name in PLAUSIBLE and r < 0.5:
            v = rng.choice(PLAUSIBLE[name])
            v = v if isinstance(v, bytes) else v.encode()
        elif r < 0.75:
            v = rng.choice(STRINGS)
        elif r < 0.97:
            v = bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 8, 33, 200, 1000])))
        else:
            v = rng.choice([b"A", b"\xff", b"/"]) * rng.choice([65536, 1 << 20])
        return [ld(f.number, v)]
    if t in (T.TYPE_DOUBLE, T.TYPE_FLOAT, T.TYPE_FIXED64, T.TYPE_SFIXED64, T.TYPE_FIXED32,
             T.TYPE_SFIXED32):
        x = rng.choice(FLOATS)
        if t == T.TYPE_DOUBLE:
            return [tag(f.number, 1) + struct.pack("<d", x)]
        if t == T.TYPE_FLOAT:
            return [tag(f.number, 5) + struct.pack("<f", rng.choice(FLOATS32))]
        if t in (T.TYPE_FIXED64, T.TYPE_SFIXED64):
            return [tag(f.number, 1) + struct.pack("<Q", rng.choice(UINTS) % 2**64)]
        return [tag(f.number, 5) + struct.pack("<I", rng.choice(UINTS) % 2**32)]
    if t == T.TYPE_MESSAGE:
        return [ld(f.number, hostile_message(rng, f.message_type, depth=1))]
    # varints: ints, uints, bools, enums (unknown values included)
    if t == T.TYPE_BOOL:
        v = rng.choice([0, 1, 2, 255, 2**64 - 1])
    elif t == T.TYPE_ENUM:
        v = rng.choice([0, 1, len(f.enum_type.values), 99, -1, 2**31 - 1])
    elif t in (T.TYPE_UINT32, T.TYPE_UINT64):
        v = rng.choice(UINTS)
    elif name in PLAUSIBLE and rng.random() < 0.4:
        v = rng.choice(PLAUSIBLE[name])
    else:
        v = rng.choice(INTS)
    if t in (T.TYPE_SINT32, T.TYPE_SINT64):
        v = (v << 1) ^ (v >> 63)
    return [tag(f.number, 0, pad=rng.choice([0, 0, 0, 3])) + varint(v)]


def hostile_message(rng, desc, depth=0):
    """Every field (or some) encoded by hand with hostile values; repeated fields get several
    entries, packed or not; fields may come twice, out of order, with unknown ones between."""
    parts = []
    for f in desc.fields:
        if rng.random() < 0.35:
            continue
        reps = 1
        if f.label == FD.LABEL_REPEATED:
            reps = rng.choice([0, 1, 2, 5, 64 if depth == 0 else 3])
            if f.type not in (FD.TYPE_STRING, FD.TYPE_BYTES, FD.TYPE_MESSAGE) and rng.random() < .5:
                body = b"".join(hostile_scalar(rng, f, f.name)[0][len(tag(f.number, 0)):]
                                for _ in range(reps))
                if f.type in (FD.TYPE_DOUBLE, FD.TYPE_FIXED64, FD.TYPE_SFIXED64):
                    body = b"".join(struct.pack("<d", rng.choice(FLOATS)) for _ in range(reps))
                elif f.type in (FD.TYPE_FLOAT, FD.TYPE_FIXED32, FD.TYPE_SFIXED32):
                    body = b"".join(struct.pack("<f", rng.choice(FLOATS32)) for _ in range(reps))
                parts.append(ld(f.number, body))
                continue
        for _ in range(reps):
            parts += hostile_scalar(rng, f, f.name)
    if rng.random() < 0.3:
        parts.append(tag(rng.choice([99, 1000, 536870911]), rng.choice([0, 2]))
                     + varint(rng.getrandbits(16)))
    if rng.random() < 0.3:
        parts.append(tag(rng.choice([99, 12345]), 1) + bytes(8))
    rng.shuffle(parts)
    return b"".join(parts)


SPEC_VALUES = [0, -1, 1, 2, 3, 7, 1000, 65536, 65537, 2**31, 2**40, 2**63, 2**64, 1e308, -1e308,
               0.5, 1e-320, float("nan"), float("inf"), "", "x" * 1000, True, None, [], {},
               [{"path": "/nonexistent/corpus"}], "/nonexistent/corpus", "../x", "tcp", "mpi",
               "@DEEP@"]  # stands for arrays nested thousands deep
# The fields that size a model and its batch get only values that are out of their bounds or
# tiny: a valid spec of a few hundred GiB would be trained by the free worker and swap the
# test machine (a memory budget for specs is not in the daemons yet: docs/development.md).
SIZE_KEYS = {"vocab", "d_model", "layers", "heads", "seq_len", "experts", "d_ff", "top_k",
             "batch_size", "micro_batch", "eval_batches", "pods", "slots", "replicas"}
SIZE_VALUES = [0, -1, 1, 2, 3, 2**31, 2**63, 2**64, 1e308, float("nan"), "", "x", True, None,
               [], {}, "@DEEP@"]


def hostile_spec(rng, spec_json):
    """The real spec (JSON) with one to three leaves replaced by hostile values, keys
    renamed or dropped: structurally a spec, semantically anything."""
    d = json.loads(spec_json)
    for _ in range(rng.choice([1, 1, 2, 3])):
        node, path = d, []
        while isinstance(node, (dict, list)) and node:
            keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
            k = rng.choice(keys)
            path.append((node, k))
            node = node[k]
        if not path:
            break
        parent, k = path[-1] if rng.random() < 0.8 else rng.choice(path)
        r = rng.random()
        if r < 0.85 or not isinstance(parent, dict):
            parent[k] = rng.choice(SIZE_VALUES if k in SIZE_KEYS else SPEC_VALUES)
        elif r < 0.93:
            del parent[k]
        else:
            parent[k + "_x"] = parent.pop(k)
    text = json.dumps(d)
    n = rng.choice([64, 5000, 200000])
    deep = rng.choice(["[", "{\"a\":"]) * n + "1" + rng.choice(["]", "}"]) * n
    text = text.replace('"@DEEP@"', deep)
    return text if rng.random() < 0.9 else text[:rng.randrange(len(text) + 1)]


def nested_unknown(rng, depth):
    body = b"\x08\x01"
    for _ in range(depth):
        body = ld(rng.choice([77, 500]), body)
    return body


def mutate(rng, buf):
    """Byte-level mutations of a valid message."""
    buf = bytearray(buf)
    fields = parse_fields(bytes(buf))
    op = rng.randrange(11)
    if op == 0 and buf:  # bit flips
        for _ in range(rng.choice([1, 1, 2, 8])):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif op == 1 and buf:  # truncation
        buf = buf[:rng.randrange(len(buf))]
    elif op == 2 and fields:  # a field duplicated (or many times)
        s, e, *_ = rng.choice(fields)
        buf += bytes(buf[s:e]) * rng.choice([1, 2, 100])
    elif op == 3 and fields:  # a tag or a length re-encoded with redundant 0x80 bytes
        s, e, num, wt, vs = rng.choice(fields)
        body = bytes(buf[vs:e])
        if wt == 2:
            new = (tag(num, 2, pad=rng.choice([0, 5])) + varint(len(body), pad=rng.choice([3, 9]))
                   + body)
        else:
            new = tag(num, wt, pad=rng.choice([4, 9])) + body
        buf[s:e] = new
    elif op == 4 and fields:  # a huge length prefix
        ld_fields = [f for f in fields if f[3] == 2] or fields
        s, e, num, wt, vs = rng.choice(ld_fields)
        n = rng.choice([2**31 - 1, 2**32 - 1, 2**63, 2**64 - 1, 4 << 20, e - vs + 1])
        buf[s:e] = tag(num, 2) + varint(n) + bytes(buf[vs:e])
    elif op == 5:  # deep nesting inside unknown fields, and groups that never end
        if rng.random() < 0.5:
            buf += nested_unknown(rng, rng.choice([10, 100, 1000]))
        else:
            buf += tag(rng.choice([1, 2, 40]), 3) * rng.choice([1, 64, 5000])
    elif op == 6:  # junk spliced in
        i = rng.randrange(len(buf) + 1)
        buf[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 4, 32])))
    elif op == 7 and fields:  # a field's wire type changed
        s, e, num, wt, vs = rng.choice(fields)
        new_wt = rng.choice([w for w in (0, 1, 2, 3, 4, 5, 6, 7) if w != wt])
        buf[s:vs if wt != 2 else s + len(tag(num, wt))] = tag(num, new_wt)
    elif op == 8 and fields:  # a field removed
        s, e, *_ = rng.choice(fields)
        del buf[s:e]
    elif op == 9:  # field number 0 and out-of-range field numbers
        buf += tag(rng.choice([0, 2**29 - 1, 2**29, 2**32 - 1]), rng.choice([0, 2])) + b"\x01\x00"
    else:  # two messages concatenated (proto merge semantics)
        buf += bytes(buf)
    return bytes(buf)


def giant(rng, desc):
    """A message whose biggest string field is near (or just over) the 4 MiB limit."""
    strs = [f for f in desc.fields if f.type in (FD.TYPE_STRING, FD.TYPE_BYTES)]
    n = rng.choice([(4 << 20) - 64, (4 << 20) - 1024, (4 << 20) + 16, 1 << 20])
    if not strs:
        return ld(7777, b"q" * n)  # an unknown field of the same size
    f = rng.choice(strs)
    return ld(f.number, rng.choice([b"y", b"\x00", b"\xff"]) * n)


class Method:
    def __init__(self, path, desc):
        self.path = path
        self.service = path.split("/")[1].split(".")[-1]
        self.name = path.split("/")[2]
        self.input = desc.input_type
        self.streaming = desc.server_streaming


class Fuzzer:
    def __init__(self, args, pb):
        self.args = args
        self.pb = pb
        cdir = args.cluster_dir
        self.coord = open(os.path.join(cdir, "coordinator.addr")).read().split()[0]
        self.client_token = open(os.path.join(cdir, "client.token")).read().split()[0]
        self.cluster_token = open(os.path.join(cdir, "cluster.token")).read().split()[0]
        self.pids = {}
        for name in os.listdir(cdir):
            if name.endswith(".pid"):
                self.pids[name[:-4]] = int(open(os.path.join(cdir, name)).read().split()[0])
        opts = [("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", 64 << 20)]
        self.opts = opts
        self.channels = {}
        bearer = lambda t: [("authorization", "Bearer " + t)]
        self.creds = {"client": bearer(self.client_token), "cluster": bearer(self.cluster_token),
                      "worker": bearer(self.cluster_token),
                      "coordinator": bearer(self.cluster_token)}
        self.wrong_creds = [[], bearer("wrong-" + self.client_token),
                            bearer(self.client_token[:-1]),
                            [("authorization", "Basic " + self.cluster_token)],
                            [("authorization", "Bearer ")],
                            [("authorization", "Bearer " + "x" * 8000)]]
        self.counts = {}

    def channel(self, target):
        if target not in self.channels:
            self.channels[target] = grpc.insecure_channel(target, options=self.opts)
        return self.channels[target]

    def call(self, target, path, payload, md, streaming, timeout):
        """(code, details, seconds) of one raw call."""
        ch = self.channel(target)
        t0 = time.monotonic()
        try:
            if streaming:
                for _ in ch.unary_stream(path, request_serializer=None,
                                         response_deserializer=None)(payload, metadata=md,
                                                                     timeout=timeout):
                    pass
            else:
                ch.unary_unary(path, request_serializer=None,
                               response_deserializer=None)(payload, metadata=md, timeout=timeout)
            return grpc.StatusCode.OK, "", time.monotonic() - t0
        except grpc.RpcError as e:
            return e.code(), e.details() or "", time.monotonic() - t0

    def unary(self, path, req, reply_type, cred="client", target=None):
        """The harness's own calls; one retry where a fuzz input closed the connection."""
        ch = self.channel(target or self.coord)
        call = ch.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                              response_deserializer=reply_type.FromString)
        try:
            return call(req, metadata=self.creds[cred], timeout=UNARY_DEADLINE_S)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        return call(req, metadata=self.creds[cred], timeout=UNARY_DEADLINE_S)

    def cluster(self):
        return self.unary("/moed.v1.Status/GetCluster", self.pb.GetClusterRequest(),
                          self.pb.ClusterStatus)

    def daemons_alive(self):
        return {name: alive(pid) for name, pid in self.pids.items()}

    # -- setup: real ids, a real spec, the fuzzer's own worker identity --

    def prepare(self):
        pb = self.pb
        st = self.cluster()
        self.workers = [w for w in st.workers if w.pid in self.pids.values()]
        check(len(self.workers) == len([n for n in self.pids if n.startswith("worker")]),
              "every worker of the cluster is registered (%s)"
              % [(w.worker_id, w.pid) for w in st.workers])
        spec = open(self.args.spec).read()
        info = self.unary("/moed.v1.Jobs/SubmitJob", pb.SubmitJobRequest(spec=spec), pb.JobInfo)
        js = self.wait_job(info.job_id, 300)
        check(js.job.state == pb.JOB_SUCCEEDED, "the warm-up job %s succeeded (%s %s)"
              % (info.job_id, pb.JobState.Name(js.job.state), js.job.error))
        self.done_job = info.job_id
        self.spec = spec
        self.spec_json = js.spec_json
        self.live_job = ""
        self.ensure_live()
        # the fuzzer's own worker identity (pod 9: never the pod of a real job)
        reg = pb.RegisterRequest(address="127.0.0.1:1", pod=9, version="fuzz", host="fuzz",
                                 pid=os.getpid(), cpus=1, data_address="127.0.0.1:1")
        raw = self.channel(self.coord).unary_unary(
            "/moed.v1.Cluster/RegisterWorker", request_serializer=None,
            response_deserializer=None)(reg.SerializeToString(), metadata=self.creds["cluster"],
                                        timeout=UNARY_DEADLINE_S)
        resp = pb.RegisterResponse.FromString(raw)
        self.own_worker = resp.worker_id
        # a per-worker credential, once RegisterResponse carries one (field 4), is presented
        # like a token; change the metadata here if it travels another way
        cred = [bytes(raw[vs:e]) for (s, e, num, wt, vs) in parse_fields(raw)
                if num == 4 and wt == 2]
        self.per_worker_credentials = bool(cred)
        if cred:
            self.creds["worker"] = [("authorization", "Bearer " + cred[0].decode("latin-1"))]
        NOTES.append("the fuzzer registered as %s (%s)" % (
            self.own_worker, "with its own worker credential" if cred else
            "no per-worker credential: the cluster token is every worker's identity, so "
            "inputs that name a real worker's id are left out of RegisterWorker and Heartbeat"))
        real_ids = [w.worker_id for w in self.workers]
        PLAUSIBLE.update({
            "job_id": [self.done_job, self.live_job, "job-999999", "job-0", ""],
            "worker_id": [self.own_worker] + (real_ids if cred else []) + ["w-999999"],
            "spec": [spec], "spec_json": [self.spec_json], "kind": ["cut", "flip"],
            "address": ["127.0.0.1:1"], "data_address": ["127.0.0.1:1"],
            "worker_address": [w.address for w in self.workers],
            "backend": ["tcp", "mpi"], "overrides": ["run.steps=2", "model.experts=-1"],
            "pod": [0, 1, 9], "slot": [0, 1, 2], "pods": [1, 2], "slots": [1, 2],
            "step": [0, 1, 3], "epoch": [0, 1, 2], "from_step": [0, 1, 3, -2**63],
            "max_steps": [0, 1, 10001], "offset": [0, 32, 2**63 - 1, 2**63 - 8],
            "total_bytes": [64, 2**63 - 1], "peer_rank": [-1, 0, 1, 2**31 - 1],
            "restore_step": [0, 1, 2**63 - 1], "model_bytes": [64, 2**63 - 1],
            "restore_from": [-1, 0, 1, -2], "mpi_rank": [0, 1], "mpi_size": [0, 2],
        })
        self.real_worker_ids = real_ids

    def ensure_live(self):
        """A job that runs while its methods are fuzzed (watched, fenced, stopped, faulted,
        reported on in its name); submitted again whenever the fuzz has ended it."""
        pb = self.pb
        if self.live_job:
            js = self.unary("/moed.v1.Status/GetJob", pb.JobRef(job_id=self.live_job), pb.JobStatus)
            if js.job.state in (pb.JOB_QUEUED, pb.JOB_RUNNING):
                return
        old = self.live_job
        self.live_job = self.unary("/moed.v1.Jobs/SubmitJob", pb.SubmitJobRequest(
            spec=self.spec, overrides=["run.steps=1000000"]), pb.JobInfo).job_id
        self.wait_job(self.live_job, 30, (pb.JOB_RUNNING,))
        if "job_id" in PLAUSIBLE:
            PLAUSIBLE["job_id"] = [self.live_job if j == old else j for j in PLAUSIBLE["job_id"]]

    def wait_job(self, job_id, seconds, states=None):
        pb = self.pb
        states = states or (pb.JOB_SUCCEEDED, pb.JOB_FAILED, pb.JOB_CANCELLED)
        deadline = time.time() + seconds
        while True:
            js = self.unary("/moed.v1.Status/GetJob", pb.JobRef(job_id=job_id), pb.JobStatus)
            if js.job.state in states or time.time() > deadline:
                return js
            time.sleep(0.1)

    # -- the valid messages each method's mutations start from --

    def seeds(self, m):
        pb = self.pb
        job, own, live = self.done_job, self.own_worker, self.live_job
        w0 = self.workers[0]
        b = lambda p, s: pb.SlotBinding(pod=p, slot=s, worker_id=w0.worker_id,
                                        worker_address=w0.address, data_address=w0.data_address)
        table = {
            "SubmitJob": [pb.SubmitJobRequest(spec=self.spec, overrides=["run.steps=2"]),
                          pb.SubmitJobRequest(spec=self.spec_json)],
            "CancelJob": [pb.JobRef(job_id=job), pb.JobRef(job_id=live)],
            "ListJobs": [pb.ListJobsRequest(active_only=True), pb.ListJobsRequest()],
            "GetJob": [pb.JobRef(job_id=job), pb.JobRef(job_id=live)],
            "WatchJob": [pb.WatchJobRequest(job_id=job), pb.WatchJobRequest(job_id=live)],
            "FetchModel": [pb.JobRef(job_id=job), pb.JobRef(job_id=live)],
            # the running job (refused) and one that never was; the finished one stays, as
            # later methods read it
            "DeleteJob": [pb.JobRef(job_id=live), pb.JobRef(job_id="job-999999")],
            "ListSteps": [pb.ListStepsRequest(job_id=job, from_step=2, max_steps=2),
                          pb.ListStepsRequest(job_id=live, from_step=1, max_steps=10000)],
            "ListEvents": [pb.ListEventsRequest(job_id=job, from_seq=1, max_events=2),
                           pb.ListEventsRequest(job_id=live, from_seq=0, max_events=10000)],
            "GetCluster": [pb.GetClusterRequest()],
            "RegisterWorker": [pb.RegisterRequest(worker_id=own, address="127.0.0.1:1", pod=9,
                                                  version="fuzz", host="fuzz", pid=1, cpus=1,
                                                  job_id=job, step=2, data_address="127.0.0.1:1",
                                                  epoch=1, extra_data_addresses=["127.0.0.1:2"])],
            "Heartbeat": [pb.HeartbeatRequest(worker_id=own, job_id=job, step=1, epoch=1),
                          pb.HeartbeatRequest(worker_id=own, job_id=live, step=9, epoch=1,
                                              holding=True)],
            "ReportStep": [pb.StepReport(worker_id=own, job_id=job, pod=0, slot=0, epoch=1,
                                         metrics=[pb.StepMetrics(step=s, loss=3.5, ce=3.4,
                                                                 expert_load=[.25] * 4,
                                                                 state_sha256=b"\1" * 32)
                                                  for s in (1, 2)])],
            "UploadModel": [pb.ModelChunk(job_id=job, offset=0, data=b"\0" * 64, total_bytes=64),
                            pb.ModelChunk(job_id=job, offset=32, data=b"x" * 32, total_bytes=64)],
            "ReportJobEnd": [pb.JobEndReport(worker_id=own, job_id=job, ok=True, step=3,
                                             model_bytes=64, model_sha256=b"\2" * 32, epoch=1)],
            "ReportFault": [pb.FaultReport(worker_id=own, job_id=j, epoch=1, step=1,
                                           error="peer rank 1 closed") for j in (job, live)],
            "ReportRestored": [pb.RestoredReport(worker_id=own, job_id=job, epoch=1, step=1,
                                                 connect_seconds=.1)],
            "RunSlot": [pb.RunSlotRequest(job_id="job-fuzz", spec_json=self.spec_json, pod=0,
                                          slot=0, pods=1, slots=1, epoch=1, backend="tcp",
                                          timeout_s=2, bindings=[b(0, 0)], data_key=b"\7" * 32),
                        pb.RunSlotRequest(job_id=job, spec_json=self.spec_json, pod=0, slot=1,
                                          pods=1, slots=2, epoch=3, backend="tcp", timeout_s=1,
                                          bindings=[b(0, 0), b(0, 1)], restore=True,
                                          restore_step=1, restore_from=[-1, 0],
                                          data_key=b"\7" * 32),
                        pb.RunSlotRequest(job_id=live, spec_json=self.spec_json, pod=0, slot=0,
                                          pods=1, slots=1, epoch=2, backend="tcp", timeout_s=1,
                                          bindings=[b(0, 0)], data_key=b"\7" * 32)],
            "StopJob": [pb.StopJobRequest(job_id=j, epoch=e) for j in (job, "job-fuzz", live)
                        for e in (0, 1, 2**64 - 1)],
            "FenceSlot": [pb.FenceRequest(job_id=j, epoch=e) for j in (job, live) for e in (1, 2)],
            "InjectFault": [pb.InjectFaultRequest(job_id=j, kind=k, peer_rank=-1)
                            for j in (job, live) for k in ("cut", "flip")],
            "ExportState": [pb.ExportStateRequest(job_id=j, epoch=e, slot=s, step=1, dir=d)
                            for j in (job, live) for e in (1, 2) for s in (0, 1)
                            for d in ("", "/tmp/../etc")],
        }
        if m.name not in table:
            raise SystemExit("fuzz_wire.py: no valid message for %s: add one to Fuzzer.seeds"
                             % m.path)
        self.seed_msgs = table[m.name]
        return [s.SerializeToString() for s in table[m.name]]

    def hostile_ids_ok(self, m, payload):
        """Without per-worker credentials a registration or heartbeat in a real worker's name
        is the cluster token's right (issue 14 takes it away): such inputs are skipped then."""
        if self.per_worker_credentials or m.name not in ("RegisterWorker", "Heartbeat"):
            return True
        return not any(w.encode() in payload for w in self.real_worker_ids)

    def make_input(self, m, rng, seeds):
        """(kind, payload, metadata, timeout) of one input."""
        r = rng.random()
        if r < 0.15:
            kind = "random"
            n = rng.choice([0, 1, 2, 5, 16, 64, 300, 4096])
            payload = bytes(rng.getrandbits(8) for _ in range(n))
        elif r < 0.22:
            kind = "valid"
            payload = rng.choice(seeds)
        elif r < 0.65:
            kind = "mutated"
            payload = rng.choice(seeds)
            for _ in range(rng.choice([1, 1, 2, 3])):
                payload = mutate(rng, payload)
        elif r < 0.85 and m.name in ("SubmitJob", "RunSlot"):
            kind = "hostile-spec"
            msg = type(self.seed_msgs[0])()
            msg.CopyFrom(self.seed_msgs[0])
            field = "spec" if m.name == "SubmitJob" else "spec_json"
            setattr(msg, field, hostile_spec(rng, self.spec_json))
            payload = msg.SerializeToString()
        elif r < 0.985:
            kind = "hostile"
            payload = hostile_message(rng, m.input)
        else:
            kind = "giant"
            payload = giant(rng, m.input)
        md = self.creds[SERVICE_CREDENTIAL[m.service]]
        if rng.random() < 0.12:
            kind += "+badcred"
            md = rng.choice(self.wrong_creds + [self.creds[c] for c in self.creds
                                                if self.creds[c] != md])
        timeout = rng.choice([0.2, 0.5, 1.0]) if m.streaming else UNARY_DEADLINE_S
        return kind, payload, md, timeout

    def target(self, m, i):
        if m.service == "Worker":
            # three inputs in four reach the handlers of the worker whose credential we hold;
            # the fourth goes to a cluster's worker, which must refuse it
            if self.args.worker_under_test and i % 4:
                return self.args.worker_under_test
            return self.workers[i % len(self.workers)].address
        return self.coord

    def fuzz_method(self, m, indices):
        seeds = self.seeds(m)
        for i in indices:
            rng = random.Random("%d:%s:%d" % (self.args.seed, m.path, i))
            kind, payload, md, timeout = self.make_input(m, rng, seeds)
            if not self.hostile_ids_ok(m, payload):
                continue
            target = self.target(m, i)
            code, det, secs = self.call(target, m.path, payload, md, m.streaming, timeout)
            if code == grpc.StatusCode.UNAVAILABLE and all(self.daemons_alive().values()):
                # the connection the last input closed (an oversized header, say): again on
                # a fresh one, so that this input reaches the server too
                code, det, secs = self.call(target, m.path, payload, md, m.streaming, timeout)
            if self.args.verbose:
                print("     %s %d %s %d bytes -> %s %.2f s %r" % (m.path, i, kind, len(payload),
                                                              code.name, secs, det[:120]))
                if self.args.index is not None:
                    print("     input: " + payload[:4096].hex())
            key = (m.path, code.name)
            self.counts[key] = self.counts.get(key, 0) + 1
            bad = None
            if code in BAD_CODES:
                bad = "answered %s" % code.name
            elif secs > timeout + HANG_MARGIN_S:
                bad = "took %.1f s with a %.1f s deadline" % (secs, timeout)
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED and not m.streaming:
                bad = "a unary call hit its %.0f s deadline" % timeout
            elif code == grpc.StatusCode.UNAVAILABLE or i % 25 == 0:
                dead = [n for n, ok in self.daemons_alive().items() if not ok]
                if dead:
                    bad = "%s died (answer %s)" % (", ".join(dead), code.name)
            if bad:
                self.fail_input(m.path, i, kind, payload, "%s \"%s\"" % (bad, det[:200]))
                if any(not ok for ok in self.daemons_alive().values()):
                    return False
        return True

    def fail_input(self, what, i, kind, payload, why):
        os.makedirs(self.args.out, exist_ok=True)
        name = "%s-%d-%d.hex" % (re.sub(r"[^A-Za-z]+", "_", what).strip("_"), self.args.seed, i)
        with open(os.path.join(self.args.out, name), "w") as f:
            f.write(payload.hex() + "\n")
        check(False, "%s input %d (seed %d, %s, %d bytes): %s; input saved as %s/%s; "
              "again: --only %s --index %d" % (what, i, self.args.seed, kind, len(payload), why,
                                               self.args.out, name, what, i))

    # -- the data plane --

    def listeners(self):
        st = self.cluster()
        out = []
        for w in st.workers:
            if w.pid not in self.pids.values():
                continue
            for a in [w.data_address] + list(w.extra_data_addresses):
                if a:
                    host, port = a.rsplit(":", 1)
                    out.append((host.strip("[]"), int(port)))
        return out


HELLO_V1 = struct.Struct("<8sIIIIIIQ128s32s32s")  # worker/comm/handshake.c struct hs_hello


def hello(rng, job, epoch, mac):
    """A plausible first message of the handshake: v1's layout, or v1 + a 32-byte MAC."""
    body = HELLO_V1.pack(b"MOEDCOMM", rng.choice([1, 1, 2, 0, 2**32 - 1]), rng.choice([0, 1, 2]),
                         rng.choice([0, 1, 2, 63, 2**32 - 1]), rng.choice([0, 1, 7]),
                         rng.choice([2, 1, 4, 0, 2**32 - 1]), rng.choice([0, 1]),
                         rng.choice([epoch, epoch + 1, 0, 2**64 - 1]),
                         rng.choice([job, b"job-999999", b"x" * 128]),
                         bytes(rng.getrandbits(8) for _ in range(32)),
                         bytes(rng.getrandbits(8) for _ in range(32)))
    return body + (bytes(rng.getrandbits(8) for _ in range(32)) if mac else b"")


def dataplane_input(rng, job, epoch):
    """(kind, bytes to send, how to end the connection)."""
    r = rng.random()
    end = rng.choice(["close", "close", "rst", "halfclose", "hold"])
    if r < 0.25:
        n = rng.choice([0, 1, 8, 100, 232, 264, 512, 4096])
        return "random", bytes(rng.getrandbits(8) for _ in range(n)), end
    h = hello(rng, job, epoch, mac=rng.random() < 0.5)
    if r < 0.45:
        return "hello", h, end
    if r < 0.65:
        return "hello-truncated", h[:rng.randrange(len(h))], end
    b = bytearray(h)
    for _ in range(rng.choice([1, 2, 8])):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    if r < 0.85:
        return "hello-flipped", bytes(b), end
    junk = bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 64, 600])))
    return "hello-then-junk", h + junk, end


def poke(addr, payload, end, hold_s):
    """One connection: send, then end it as asked; returns the bytes the worker answered."""
    got = b""
    s = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(addr)
        if payload:
            s.sendall(payload)
        if end == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif end == "halfclose":
            s.shutdown(socket.SHUT_WR)
            s.settimeout(hold_s)
            try:
                got = s.recv(4096)
            except OSError:
                pass
        elif end == "hold":
            s.settimeout(hold_s)
            try:
                got = s.recv(4096)
            except OSError:
                pass
    except OSError:
        pass
    finally:
        s.close()
    return got


def fuzz_dataplane(fz, tag_, n, job, epoch, stop=None, sent=None):
    """n connections per listener, four at a time; with `stop` (an Event), connections go on
    (up to 20 n per listener) until it is set."""
    addrs = fz.listeners()
    if not addrs:
        check(False, "the workers report data-plane listeners")
        return 0
    sent = sent if sent is not None else [0]
    lock = threading.Lock()
    limit = n * len(addrs) * (20 if stop is not None else 1)

    def run():
        while True:
            with lock:
                k = sent[0]
                if k >= limit or (stop is not None and stop.is_set()):
                    return
                sent[0] += 1
            addr, i = addrs[k % len(addrs)], k // len(addrs)
            rng = random.Random("%d:dataplane:%s:%d" % (fz.args.seed, tag_, i))
            kind, payload, end = dataplane_input(rng, job, epoch)
            poke(addr, payload, end, hold_s=rng.choice([0.05, 0.3, 1.0]))
    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent[0]


def dataplane_phase(fz):
    pb = fz.pb
    n = max(1, fz.args.conns)
    sent = fuzz_dataplane(fz, "idle", n, fz.done_job.encode(), 1)
    dead = [k for k, ok in fz.daemons_alive().items() if not ok]
    check(not dead, "%d data-plane connections to idle workers: every daemon lives %s"
          % (sent, dead or ""))
    # while a real 1 x 2 job forms its mesh: the fuzz starts before the submit and goes on
    # until the job has run a step (or ended); its hellos name the job's id
    ids = [int(j.job_id[4:]) for j in fz.unary("/moed.v1.Jobs/ListJobs", pb.ListJobsRequest(),
                                                pb.ListJobsResponse).jobs if j.job_id[4:].isdigit()]
    guess = b"job-%d" % (max(ids + [0]) + 1)  # the id the job is about to get
    stop, during = threading.Event(), [0]
    t = threading.Thread(target=fuzz_dataplane, args=(fz, "mesh", n, guess, 1, stop, during))
    t.start()
    while t.is_alive() and during[0] < n:  # some planted before the job exists
        time.sleep(0.01)
    info = fz.unary("/moed.v1.Jobs/SubmitJob", pb.SubmitJobRequest(
        spec=fz.spec, overrides=["mesh.pods=1", "mesh.slots=2", "mesh.spare_wait_s=15"]),
        pb.JobInfo)
    deadline = time.time() + 300
    while t.is_alive() and time.time() < deadline:
        js = fz.unary("/moed.v1.Status/GetJob", pb.JobRef(job_id=info.job_id), pb.JobStatus)
        if js.job.step >= 1 or js.job.state in (pb.JOB_SUCCEEDED, pb.JOB_FAILED,
                                                pb.JOB_CANCELLED):
            break
        time.sleep(0.05)
    stop.set()
    t.join()
    js = fz.wait_job(info.job_id, 300)
    dead = [k for k, ok in fz.daemons_alive().items() if not ok]
    check(not dead, "%s (1 x 2) formed its mesh under %d data-plane connections: every daemon "
          "lives %s" % (info.job_id, during[0], dead or ""))
    ended = js.job.state in ((pb.JOB_SUCCEEDED,) if MESH_JOB_MUST_SUCCEED else
                             (pb.JOB_SUCCEEDED, pb.JOB_FAILED, pb.JOB_CANCELLED))
    check(ended, "... and the job %s: %s %s (%d recoveries)"
          % ("succeeded" if MESH_JOB_MUST_SUCCEED else "ended", pb.JobState.Name(js.job.state),
             js.job.error, js.job.recoveries))
    if not ended:
        fz.unary("/moed.v1.Jobs/CancelJob", pb.JobRef(job_id=info.job_id), pb.JobInfo)
    NOTES.append("the job formed under data-plane fuzzing: %s %s (%d recoveries)"
                 % (pb.JobState.Name(js.job.state), js.job.error, js.job.recoveries))


def streams_phase(fz, n):
    """Streams cut short from four threads at once: WatchJob of the live job and FetchModel of
    the finished one, with deadlines down to 1 ms or cancelled after the first message."""
    pb = fz.pb
    bad = []

    def run(t):
        rng = random.Random("%d:streams:%d" % (fz.args.seed, t))
        ch = grpc.insecure_channel(fz.coord, options=fz.opts)
        for i in range(n):
            path, job = rng.choice([("/moed.v1.Status/WatchJob", fz.live_job),
                                    ("/moed.v1.Jobs/WatchJob", fz.live_job),
                                    ("/moed.v1.Jobs/FetchModel", fz.done_job)])
            req = (pb.WatchJobRequest(job_id=job) if "Watch" in path
                   else pb.JobRef(job_id=job)).SerializeToString()
            timeout = rng.choice([0.001, 0.01, 0.05, 0.3])
            t0 = time.monotonic()
            try:
                it = ch.unary_stream(path, request_serializer=None, response_deserializer=None)(
                    req, metadata=fz.creds["client"], timeout=timeout)
                for _ in it:
                    if rng.random() < 0.5:
                        it.cancel()
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
            if code in BAD_CODES or time.monotonic() - t0 > timeout + HANG_MARGIN_S:
                bad.append("%s thread %d input %d: %s after %.1f s"
                           % (path, t, i, code.name, time.monotonic() - t0))
        ch.close()
    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dead = [k for k, ok in fz.daemons_alive().items() if not ok]
    check(not dead and not bad, "%d streams cut short, four at a time (seed %d): every daemon "
          "lives %s%s" % (4 * n, fz.args.seed, dead or "", "; ".join(bad[:5])))


def grpc_port_phase(fz, n):
    """The gRPC ports themselves: bytes that are not HTTP/2, and HTTP/2's preface followed by
    junk frames, to the coordinator and every worker."""
    targets = [fz.coord] + [w.address for w in fz.workers]
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    for i in range(n):
        rng = random.Random("%d:grpcport:%d" % (fz.args.seed, i))
        host, port = rng.choice(targets).rsplit(":", 1)
        junk = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 9, 100, 2000])))
        if rng.random() < 0.6:  # a frame header: length, type, flags, stream id, then junk
            frame = struct.pack(">I", rng.getrandbits(24))[1:] + bytes([rng.randrange(12),
                                                                      rng.getrandbits(8)])
            junk = preface + frame + struct.pack(">I", rng.getrandbits(32)) + junk
        poke((host.strip("[]"), int(port)), junk, rng.choice(["close", "rst", "halfclose"]),
             hold_s=0.2)
    dead = [k for k, ok in fz.daemons_alive().items() if not ok]
    check(not dead, "%d raw connections to the gRPC ports: every daemon lives %s"
          % (n, dead or ""))


def cancel_active(fz):
    """Jobs that fuzzed SubmitJobs queued: cancelled, so that the workers come back idle."""
    pb = fz.pb
    jobs = fz.unary("/moed.v1.Jobs/ListJobs", pb.ListJobsRequest(active_only=True),
                    pb.ListJobsResponse).jobs
    for j in jobs:
        try:
            fz.unary("/moed.v1.Jobs/CancelJob", pb.JobRef(job_id=j.job_id), pb.JobInfo)
        except grpc.RpcError:
            pass
    return len(jobs)


def methods_of(path):
    return re.findall(r'#define\s+RPC_\w+\s+"(/[^"]+)"', open(path).read())


def main():
    global FD
    ap = argparse.ArgumentParser()
    ap.add_argument("--pb-dir", required=True)
    ap.add_argument("--cluster-dir", required=True)
    ap.add_argument("--methods", required=True, help="proto/methods.h")
    ap.add_argument("--spec", required=True, help="a small job spec for the real jobs")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("MOE_FUZZ_SEED", "1")))
    ap.add_argument("--inputs", type=int, default=int(os.environ.get("MOE_FUZZ_INPUTS", "300")))
    ap.add_argument("--conns", type=int, default=int(os.environ.get("MOE_FUZZ_CONNS", "60")),
                    help="data-plane connections per listener and phase")
    ap.add_argument("--out", default="fuzz-failures")
    ap.add_argument("--verbose", action="store_true",
                    default=bool(os.environ.get("MOE_FUZZ_VERBOSE")), help="every input's answer")
    ap.add_argument("--worker-under-test", help="HOST:PORT of a worker registered with a "
                    "stand-in coordinator (tests/fake_coordinator.py), whose Worker service "
                    "the fuzz reaches with the credential in --worker-credential-file")
    ap.add_argument("--worker-credential-file", help="its first line: that credential")
    ap.add_argument("--only", help="one method path")
    ap.add_argument("--index", type=int, help="with --only: one input")
    args = ap.parse_args()
    sys.path.insert(0, args.pb_dir)
    import moed_pb2 as pb
    from google.protobuf.descriptor import FieldDescriptor
    FD = FieldDescriptor

    fz = Fuzzer(args, pb)
    if args.worker_credential_file:
        cred = open(args.worker_credential_file).read().split()[0]
        fz.creds["coordinator"] = [("authorization", "Bearer " + cred)]
    print("fuzzing %s with seed %d, %d inputs per method"
          % (args.cluster_dir, args.seed, args.inputs))
    fz.prepare()
    methods = []
    for path in methods_of(args.methods):
        svc, name = path.split("/")[1].split(".")[-1], path.split("/")[2]
        methods.append(Method(path, pb.DESCRIPTOR.services_by_name[svc].methods_by_name[name]))
    check(len(methods) >= 22, "%d methods in %s" % (len(methods), args.methods))
    if args.only:
        methods = [m for m in methods if m.path == args.only]
    t0 = time.monotonic()
    for m in methods:
        idx = [args.index] if args.index is not None else range(args.inputs)
        t1 = time.monotonic()
        fz.ensure_live()
        if not fz.fuzz_method(m, idx):
            break
        codes = sorted((c, n) for (p, c), n in fz.counts.items() if p == m.path)
        print("     %-36s %5.1f s  %s" % (m.path, time.monotonic() - t1,
                                          " ".join("%s:%d" % cn for cn in codes)))
        sys.stdout.flush()
    dead = [k for k, ok in fz.daemons_alive().items() if not ok]
    check(not dead, "%d methods fuzzed in %.0f s: every daemon lives %s"
          % (len(methods), time.monotonic() - t0, dead or ""))
    if dead:
        return 1
    try:
        # what the fuzz stored is still readable by a stock client, whole
        if args.only is None:
            fz.ensure_live()
            streams_phase(fz, max(1, args.inputs // 10))
            grpc_port_phase(fz, max(1, args.inputs // 2))
        st = fz.cluster()
        check(True, "GetCluster answers a stock client after the RPC fuzz (%d workers known)"
              % len(st.workers))
        jobs = fz.unary("/moed.v1.Jobs/ListJobs", pb.ListJobsRequest(), pb.ListJobsResponse).jobs
        for j in jobs:
            fz.unary("/moed.v1.Status/GetJob", pb.JobRef(job_id=j.job_id), pb.JobStatus)
        check(True, "ListJobs and GetJob of each of its %d jobs parse" % len(jobs))
        check(cancel_active(fz) >= 0, "jobs the fuzz queued are cancelled")
        if args.only is None:
            dataplane_phase(fz)
        st = fz.cluster()
        check(True, "GetCluster answers after the fuzz (%d workers known)" % len(st.workers))
    except grpc.RpcError as e:
        check(False, "a stock client's call after the fuzz: %s %s" % (e.code().name, e.details()))
    for n in NOTES:
        print("     note: " + n)
    for ch in fz.channels.values():
        ch.close()
    print("fuzz_wire: %d failure(s)" % len(FAILURES))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
