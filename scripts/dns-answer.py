#!/usr/bin/env python3
"""A DNS server for one name, for scripts/image-run.sh: answers A queries for `edgeHub` (any
case, with or without a search domain after it) with 127.0.0.1 and every other query with
NXDOMAIN. IoT Edge's network resolves edgeHub the same way, by DNS; this lets the image's own glibc
do that lookup without a real network.

    scripts/dns-answer.py ADDRESS        (serves UDP on ADDRESS:53 until killed)
"""
import socket
import struct
import sys

NAME = b"edgehub"
ANSWER = socket.inet_aton("127.0.0.1")


def answer(query: bytes) -> bytes:
    ident, _flags, qdcount = struct.unpack("!HHH", query[:6])
    # The question: labels up to a zero byte, then type and class.
    end, labels = 12, []
    while query[end] != 0:
        labels.append(query[end + 1 : end + 1 + query[end]].lower())
        end += 1 + query[end]
    qtype = struct.unpack("!H", query[end + 1 : end + 3])[0]
    question = query[12 : end + 5]
    found = qdcount == 1 and labels[:1] == [NAME]
    if not found:
        return struct.pack("!HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
    if qtype != 1:
        return struct.pack("!HHHHHH", ident, 0x8180, 1, 0, 0, 0) + question  # no AAAA
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + ANSWER
    return struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + record


def main() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((sys.argv[1], 53))
    while True:
        query, peer = server.recvfrom(512)
        try:
            server.sendto(answer(query), peer)
            print("dns: answered", query[12:].split(b"\0")[0], flush=True)
        except (IndexError, struct.error):
            pass


if __name__ == "__main__":
    main()
