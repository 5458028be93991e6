"""Worker.InjectFault, as `moectl chaos` sends it, for a fault kind chaos does not schedule
(tests/cli_transfer_check.sh: "corrupt-transfer"). Python's grpcio and the messages protoc
generated from proto/moed.proto into PBDIR; the worker's operator token (the file it wrote to
its scratch directory); the cluster's CA when the cluster runs TLS.

  /usr/bin/python3 inject_fault.py PBDIR ADDRESS TOKEN_FILE JOB KIND [CA_FILE]

Exit 0 when the worker accepted it; 1, with the status on stderr, when it did not.
"""
import sys

import grpc


def main():
    pbdir, address, token_file, job, kind = sys.argv[1:6]
    ca = sys.argv[6] if len(sys.argv) > 6 else ""
    sys.path.insert(0, pbdir)
    import moed_pb2  # noqa: E402 (generated at test time)

    token = open(token_file).read().strip()
    if ca:
        creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
        channel = grpc.secure_channel(address, creds)
    else:
        channel = grpc.insecure_channel(address)
    call = channel.unary_unary("/moed.v1.Worker/InjectFault",
                               request_serializer=moed_pb2.InjectFaultRequest.SerializeToString,
                               response_deserializer=moed_pb2.Empty.FromString)
    try:
        call(moed_pb2.InjectFaultRequest(job_id=job, kind=kind, peer_rank=-1),
             metadata=[("authorization", "Bearer " + token)], timeout=10)
    except grpc.RpcError as e:
        print("InjectFault %s on %s: %s: %s" % (kind, address, e.code().name, e.details()),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
