#!/usr/bin/env python3
"""A test double of the Python version of machinaftp, written from
../shared/seed/PYTHON-PROTOCOL.md alone, for tests/python_protocol.rs.

It behaves as that document says the Python version does, weaknesses included (one recv(4096)
for the preamble and its acknowledgement, no timeouts, no verdict to the peer), with three
additions a test needs: port 0 for the data channel (the port is printed), the return channel's
port as an option (the original fixed 8091), and switches that make it misbehave.

    python_double.py server FILE --port 0 --zmq-port N [--remotehost H] [--rush] [--corrupt]
    python_double.py client OUT --port P --zmq-port N [--corrupt]

The server prints "listening PORT", then "Done! - TX", and "Done! - RX" or "Failed"; the client
prints "Done! - RX" and "Done! - TX", or "Failed".
"""
import argparse
import json
import os
import socket
import sys
import zlib

import zmq

FRAME = 65536


def preamble(data: bytes) -> bytes:
    return json.dumps({"size": str(len(data)), "cksum": str(zlib.crc32(data) & 0xFFFFFFFF)}).encode()


def flip(data: bytes) -> bytes:
    if not data:
        return data
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def say(line: str) -> None:
    print(line, flush=True)


def server(args) -> None:
    with open(args.file, "rb") as f:
        data = f.read()
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    # Connected at start-up, before any client: ZeroMQ reconnects until B's ROUTER appears.
    dealer.connect(f"tcp://{args.remotehost}:{args.zmq_port}")
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", args.port))
    lsock.listen(1)
    say(f"listening {lsock.getsockname()[1]}")
    conn, _ = lsock.accept()
    sent = flip(data) if args.corrupt else data
    if args.rush:
        # Preamble and file in one go, without waiting for the acknowledgement.
        conn.sendall(preamble(data) + sent)
        conn.recv(4096)
    else:
        conn.sendall(preamble(data))
        conn.recv(4096)  # the acknowledgement; its content is ignored
        conn.sendall(sent)
    conn.close()
    say("Done! - TX")
    dealer.send(b"fetch")
    pre = dealer.recv()
    dealer.send(pre)
    announced = json.loads(pre)
    got = bytearray()
    while True:
        frame = dealer.recv()
        if frame == b"":
            break
        got += frame
    with open("output.stl", "wb") as f:
        f.write(got)
    ok = len(got) == int(announced["size"]) and zlib.crc32(bytes(got)) & 0xFFFFFFFF == int(announced["cksum"])
    say("Done! - RX" if ok else "Failed")


def client(args) -> None:
    sock = socket.create_connection(("127.0.0.1", args.port))
    pre = sock.recv(4096)
    announced = json.loads(pre)
    sock.sendall(pre)
    got = bytearray()
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        got += chunk
    sock.close()
    if len(got) != int(announced["size"]) or zlib.crc32(bytes(got)) & 0xFFFFFFFF != int(announced["cksum"]):
        say("Failed")
        sys.exit(1)
    with open(args.out, "wb") as f:
        f.write(got)
    say("Done! - RX")
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.SNDHWM, 0)
    router.bind(f"tcp://*:{args.zmq_port}")
    ident, word = router.recv_multipart()
    assert word == b"fetch", word
    router.send_multipart([ident, preamble(bytes(got))])
    router.recv_multipart()  # the server's echo
    back = flip(bytes(got)) if args.corrupt else bytes(got)
    for i in range(0, len(back), FRAME):
        router.send_multipart([ident, back[i : i + FRAME]])
    router.send_multipart([ident, b""])
    router.close()
    ctx.term()
    say("Done! - TX")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("path")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--zmq-port", type=int, required=True)
    p.add_argument("--remotehost", default="127.0.0.1")
    p.add_argument("--rush", action="store_true")
    p.add_argument("--corrupt", action="store_true")
    args = p.parse_args()
    if args.role == "server":
        args.file = args.path
        server(args)
    else:
        args.out = args.path
        client(args)


if __name__ == "__main__":
    os.umask(0o022)
    main()
