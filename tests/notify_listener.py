"""A stand-in for systemd's notify socket: binds an AF_UNIX datagram socket (NOTIFY_SOCKET for
the daemon under test) and writes each message it receives as one line, its fields joined by
'|'. On READY=1 it runs --on-ready (a shell command) at once and writes "on-ready: <its output>":
what the daemon looked like from outside the moment it said it was ready. Runs until killed.

  notify_listener.py SOCKET_PATH OUT_FILE [--on-ready CMD]
"""
import os
import socket
import subprocess
import sys


def main(argv):
    path, out = argv[1], argv[2]
    on_ready = argv[4] if len(argv) > 4 and argv[3] == "--on-ready" else None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    with open(out, "a") as f:
        f.write("listening\n")
        f.flush()
        while True:
            msg = s.recv(4096).decode(errors="replace")
            fields = [x for x in msg.split("\n") if x]
            f.write("|".join(fields) + "\n")
            f.flush()
            if on_ready and "READY=1" in fields:
                r = subprocess.run(["bash", "-c", on_ready], capture_output=True, text=True)
                f.write("on-ready: " + " ".join(r.stdout.split()) + "\n")
                f.flush()


if __name__ == "__main__":
    try:
        main(sys.argv)
    except KeyboardInterrupt:
        pass
