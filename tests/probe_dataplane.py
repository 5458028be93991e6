"""An attacker on the data-plane network, for cli_probe_dataplane.sh. It knows the workers'
data-plane addresses (anyone on the network can scan for them) but no key.

  probe_dataplane.py plant ADDR...          before a job: connections that each send something
                                            that looks like a handshake (the old v1 HELLO
                                            naming another job and epoch, random bytes of
                                            every plausible size) and close at once; they wait
                                            in the listener's accept queue for the next job
  probe_dataplane.py hold N STOPFILE OUT ADDR...
                                            slowloris: N connections spread over ADDRs, most
                                            silent, some sending a HELLO, held open until
                                            STOPFILE exists (or 300 s); then writes to OUT a
                                            JSON summary: how many connected and how many
                                            received any byte at all from a worker (must be 0)

Deterministic (seeded). Exit 0 unless the attacker itself could not run.
"""
import errno
import json
import os
import random
import select
import socket
import struct
import sys
import time

rng = random.Random(14)


def split(addr):
    host, port = addr.rsplit(":", 1)
    return host.strip("[]"), int(port)


def v1_hello(job, epoch, frm, to):
    # the layout of the first handshake message before v2: magic, version, from, to, channel,
    # size, shm, epoch, job[128], host[32], nonce[32]
    body = b"MOEDCOMM" + struct.pack("<IIIIII", 1, frm, to, 0, 4, 0)
    body += struct.pack("<Q", epoch)
    body += job.encode().ljust(128, b"\0") + os.urandom(32) + os.urandom(32)
    return body


def payloads():
    out = [v1_hello("job-999", 7, 0, 1), v1_hello("job-1", 1, 0, 1), v1_hello("job-1", 99, 0, 3)]
    for size in (1, 8, 64, 128, 224, 232, 240, 256, 280, 512, 4096):
        out.append(bytes(rng.getrandbits(8) for _ in range(size)))
    out.append(b"MOEDCOMM" + bytes(rng.getrandbits(8) for _ in range(300)))
    return out


def plant(addrs):
    sent = 0
    for a in addrs:
        for p in payloads():
            s = socket.create_connection(split(a), timeout=10)
            s.sendall(p)
            s.close()
            sent += 1
    print("planted %d connections" % sent)


def hold(n, stopfile, out, addrs):
    socks = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(split(addrs[i % len(addrs)]))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            continue
        socks.append(s)
    talkers = set(range(0, len(socks), 10))  # every tenth sends a v1 HELLO once connected
    connected, got_bytes, told = set(), 0, set()
    deadline = time.time() + 300
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLOUT)
    fdmap = {s.fileno(): i for i, s in enumerate(socks)}
    while not os.path.exists(stopfile) and time.time() < deadline:
        for fd, ev in poller.poll(200):
            i = fdmap[fd]
            if ev & select.POLLOUT and i not in connected:
                if socks[i].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    connected.add(i)
                    if i in talkers:
                        try:
                            socks[i].send(v1_hello("job-999", 7, 0, 1))
                            told.add(i)
                        except OSError:
                            pass
                poller.modify(fd, select.POLLIN)
            else:
                if ev & select.POLLIN:
                    try:
                        if socks[i].recv(4096, socket.MSG_DONTWAIT):
                            got_bytes += 1
                    except OSError:
                        pass
                poller.unregister(fd)  # answered, closed or failed: done with it
                connected.discard(i)
    # a last look: anything a worker wrote to any of them is a leak
    for i in connected:
        try:
            if socks[i].recv(4096, socket.MSG_DONTWAIT):
                got_bytes += 1
        except OSError:
            pass
    for s in socks:
        s.close()
    json.dump({"opened": len(socks), "connected": len(connected), "got_bytes": got_bytes,
               "sent_hello": len(told)}, open(out, "w"))


if __name__ == "__main__":
    if sys.argv[1] == "plant":
        plant(sys.argv[2:])
    else:
        hold(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:])
