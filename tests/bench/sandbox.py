"""The sandbox benchmark's client (tests/bench/sandbox.sh): the official MCP SDK against
`fort mcp --host` (FORT_MANIFEST / FORT_STATE_DIR from the environment).

usage: python3 tests/bench/sandbox.py FORT RUNS CONCURRENT IDLE_SECS
Prints JSON: per sequential create its ready_ms and boot_ms; the wall time of CONCURRENT
creates at once; then, with CONCURRENT sandboxes up, waits IDLE_SECS (the shell samples the
server's CPU and RSS meanwhile, from the pid printed on stderr) and destroys them.
"""
import asyncio
import json
import os
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main(fort: str, runs: int, concurrent: int, idle: float) -> None:
    params = StdioServerParameters(command=fort, args=["mcp", "--host"], env=dict(os.environ))
    out = {"sequential": [], "concurrent": {}}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()

            async def create():
                r = await s.call_tool("sandbox_create", {"template": "b"})
                assert not r.is_error, r
                return r.structured_content

            for _ in range(runs):
                c = await create()
                out["sequential"].append({"ready_ms": c["ready_ms"], "boot_ms": c["boot_ms"]})
                r = await s.call_tool("sandbox_destroy", {"id": c["id"]})
                assert not r.is_error, r
            t = time.monotonic()
            made = await asyncio.gather(*[create() for _ in range(concurrent)])
            out["concurrent"] = {
                "n": concurrent,
                "wall_ms": round((time.monotonic() - t) * 1000),
                "boot_ms": [c["boot_ms"] for c in made],
            }
            print("idle", flush=True, file=sys.stderr)
            await asyncio.sleep(idle)
            print("idle done", flush=True, file=sys.stderr)
            await asyncio.gather(*[s.call_tool("sandbox_destroy", {"id": c["id"]}) for c in made])
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
