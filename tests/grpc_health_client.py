"""A stock gRPC client of the standard health service, with nothing of moed but the shipped
descriptor set (build/moed.protoset): Debian's python3-grpcio, and message classes built at
run time from that set through protobuf's descriptor_pool, as grpcurl or Postman would. Run by
cli_grpc_health.sh; one verb per run:

  grpc_health_client.py PROTOSET services
      prints every service and method the set describes, one "service/method" a line
  grpc_health_client.py PROTOSET check TARGET SERVICE [TIMEOUT_S]
      Health/Check without a token: prints the status (SERVING, ...) or the call's error code
  grpc_health_client.py PROTOSET watch TARGET SERVICE
      Health/Watch without a token: prints each status as it comes, then "END <code>"
  grpc_health_client.py PROTOSET watch-many TARGET MAX
      opens Watch streams of "" until one is refused or MAX are open: prints "served N then
      <code>"; closes them all, then opens one more: "again SERVING" once one is served
  grpc_health_client.py PROTOSET call TARGET /pkg.Service/Method
      a unary call of that method with an empty request and no token: prints the code

Every line is flushed at once: the shell test waits for lines, never for time.
"""
import sys
import time

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def load(path):
    with open(path, "rb") as f:
        files = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for fd in files.file:
        pool.Add(fd)
    return files, pool


def message_class(pool, name):
    d = pool.FindMessageTypeByName(name)
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4
        return message_factory.GetMessageClass(d)
    return message_factory.MessageFactory(pool).GetPrototype(d)


def out(line):
    print(line)
    sys.stdout.flush()


def services(files):
    for fd in files.file:
        for s in fd.service:
            for m in s.method:
                out("%s.%s/%s" % (fd.package, s.name, m.name))


def health(pool, target, method, service, kind, timeout):
    req_cls = message_class(pool, "grpc.health.v1.HealthCheckRequest")
    resp_cls = message_class(pool, "grpc.health.v1.HealthCheckResponse")
    names = resp_cls.DESCRIPTOR.enum_types_by_name["ServingStatus"].values_by_number
    channel = grpc.insecure_channel(target)
    call = getattr(channel, kind)("/grpc.health.v1.Health/" + method,
                                  request_serializer=req_cls.SerializeToString,
                                  response_deserializer=resp_cls.FromString)
    req = req_cls(service=service)
    try:
        if kind == "unary_unary":
            out(names[call(req, timeout=timeout).status].name)
            return
        for r in call(req):
            out(names[r.status].name)
        out("END OK")
    except grpc.RpcError as e:
        out(("END " if kind != "unary_unary" else "") + e.code().name)


def watch_many(pool, target, limit):
    req_cls = message_class(pool, "grpc.health.v1.HealthCheckRequest")
    resp_cls = message_class(pool, "grpc.health.v1.HealthCheckResponse")
    channel = grpc.insecure_channel(target)
    watch = channel.unary_stream("/grpc.health.v1.Health/Watch",
                                 request_serializer=req_cls.SerializeToString,
                                 response_deserializer=resp_cls.FromString)
    streams, code = [], "nothing"
    for _ in range(limit):
        it = watch(req_cls(service=""), timeout=60)
        try:
            next(it)
            streams.append(it)
        except grpc.RpcError as e:
            code = e.code().name
            break
    out("served %d then %s" % (len(streams), code))
    for it in streams:
        it.cancel()
    deadline = time.time() + 30  # the server closes them as the cancellations arrive
    while time.time() < deadline:
        it = watch(req_cls(service=""), timeout=10)
        try:
            next(it)
            it.cancel()
            out("again SERVING")
            return
        except grpc.RpcError:
            time.sleep(0.05)
    out("again refused")


def unary_no_token(pool, target, path):
    service, method = path.strip("/").split("/")
    m = pool.FindServiceByName(service).FindMethodByName(method)
    req_cls = message_class(pool, m.input_type.full_name)
    channel = grpc.insecure_channel(target)
    call = channel.unary_unary(path, request_serializer=req_cls.SerializeToString,
                               response_deserializer=lambda b: b)
    try:
        call(req_cls(), timeout=10)
        out("OK")
    except grpc.RpcError as e:
        out(e.code().name)


def main(argv):
    files, pool = load(argv[1])
    verb = argv[2]
    if verb == "services":
        services(files)
    elif verb == "check":
        timeout = float(argv[5]) if len(argv) > 5 else 10.0
        health(pool, argv[3], "Check", argv[4], "unary_unary", timeout)
    elif verb == "watch":
        health(pool, argv[3], "Watch", argv[4], "unary_stream", None)
    elif verb == "watch-many":
        watch_many(pool, argv[3], int(argv[4]))
    elif verb == "call":
        unary_no_token(pool, argv[3], argv[4])
    else:
        out("unknown verb " + verb)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
