"""A client on Python `websockets`, with permessage-deflate on: a peer for spool's servers.

Usage: py_client.py URL. Sends text, binary, a 1 MiB text and a fragmented message, checks each
echo, and prints `OK deflate=<bool>`; exits non-zero with the reason otherwise.
"""
import asyncio
import sys

from websockets.asyncio.client import connect


async def main(url):
    async with connect(url, compression="deflate", max_size=None) as ws:
        deflate = any(e.name == "permessage-deflate" for e in ws.protocol.extensions)
        cases = ["hello", b"\x00\x01\x02binary", "κόσμε " * 200_000, b"\xff" * 70_000]
        for sent in cases:
            await ws.send(sent)
            got = await ws.recv()
            if got != sent:
                sys.exit(f"echo mismatch for a {type(sent).__name__} of {len(sent)}")
        # A fragmented message: websockets sends each item of an iterable as a frame.
        await ws.send(["frag", "mented ", "text"])
        got = await ws.recv()
        if got != "fragmented text":
            sys.exit(f"fragmented echo was {got!r}")
        await ws.close()
        print(f"OK deflate={deflate}", flush=True)


asyncio.run(main(sys.argv[1]))
