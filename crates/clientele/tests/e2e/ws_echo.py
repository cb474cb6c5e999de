"""WebSocket helper for the e2e tests, on PyPI's `websockets` (scripts/test.sh installs it).

  ws_echo.py serve            an echo server on a free loopback port; prints the port, then
                              serves until stdin closes
  ws_echo.py client URL KEY N sends N text messages and one binary through URL with the API
                              key, closes with code 4001, prints what came back as JSON
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def run_server():
    async with serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


async def run_client(url, key, n):
    got = []
    async with connect(url, additional_headers={"X-API-Key": key}, open_timeout=20) as ws:
        for i in range(n):
            await ws.send(f"hello {i}")
            got.append(await asyncio.wait_for(ws.recv(), 20))
        await ws.send(b"\x00\x01\x02binary")
        back = await asyncio.wait_for(ws.recv(), 20)
        got.append(back.hex())
        await ws.close(code=4001, reason="done")
        close_code = ws.close_code
    print(json.dumps({"echoed": got, "close_code": close_code}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(run_server())
    else:
        asyncio.run(run_client(sys.argv[2], sys.argv[3], int(sys.argv[4])))
