"""An echo server on Python `websockets`, with permessage-deflate on: a peer for spool's client.

Prints `PORT <n>` once listening on 127.0.0.1, echoes every message, and exits when stdin
closes (so a test that dies leaves nothing behind).
"""
import asyncio
import sys

from websockets.asyncio.server import serve


async def echo(ws):
    # Report what was negotiated as the first message, so the test can check compression.
    await ws.send("extensions:" + ",".join(e.name for e in ws.protocol.extensions))
    async for message in ws:
        await ws.send(message)


async def main():
    async with serve(echo, "127.0.0.1", 0, compression="deflate", max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


asyncio.run(main())
