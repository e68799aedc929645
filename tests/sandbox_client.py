"""Drive fort's sandbox service with the official MCP Python SDK (a client nobody here wrote).

usage: python3 tests/sandbox_client.py stdio FORT_BINARY
       python3 tests/sandbox_client.py http URL TOKEN
stdio runs `fort mcp --host` (the manifest and state dir come from FORT_MANIFEST and
FORT_STATE_DIR); http connects to `fort serve` over Streamable HTTP with a bearer token.

Creates two sandboxes of template `ci` concurrently (one with ttl 20s), runs a command in each,
writes and reads a file, lists them with their remaining time, destroys one, waits for the
other to expire, and checks the errors for bad input. Prints one line per check and, last, a
JSON line {"destroyed": ID, "expired": ID}; exits non-zero on the first failure.
"""
import asyncio
import json
import os
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
import mcp.client.streamable_http as streamable_http


def structured(result):
    assert not result.is_error, result
    return result.structured_content


async def check(session: ClientSession) -> dict:
    init = await session.initialize()
    print(f"initialized: {init.server_info.name} protocol {init.protocol_version}")
    assert init.server_info.name == "fort", init
    names = [t.name for t in (await session.list_tools()).tools]
    print(f"tools: {','.join(names)}")
    for n in ["sandbox_create", "sandbox_list", "sandbox_extend", "sandbox_destroy",
              "run_command", "file_read", "file_write", "process_start"]:
        assert n in names, (n, names)
    assert "shutdown" not in names, names

    # Bad input first: nothing is made.
    r = await session.call_tool("sandbox_create", {"template": "nope"})
    assert r.is_error and r.content[0].text == \
        "unknown sandbox template `nope`: the manifest declares sandbox.ci", r
    r = await session.call_tool("sandbox_create", {"template": "ci", "ttl": "3h"})
    assert r.is_error and r.content[0].text == \
        "ttl 3h is longer than sandbox.ci's max_ttl (1h)", r
    r = await session.call_tool("run_command", {"sandbox": "ci-ffff", "argv": ["true"]})
    assert r.is_error and r.content[0].text.startswith("no sandbox `ci-ffff`"), r
    print("bad input: refused with exact errors")

    t0 = time.monotonic()
    a, b = await asyncio.gather(
        session.call_tool("sandbox_create", {"template": "ci"}),
        session.call_tool("sandbox_create", {"template": "ci", "ttl": "20s"}),
    )
    a, b = structured(a), structured(b)
    print(f"created {a['id']} ({a['ip']}, {a['ready_ms']} ms) and {b['id']} ({b['ip']}, "
          f"{b['ready_ms']} ms) concurrently in {time.monotonic() - t0:.1f} s")
    assert a["id"] != b["id"] and a["ip"] != b["ip"], (a, b)

    for s in (a, b):
        out = structured(await session.call_tool(
            "run_command", {"sandbox": s["id"], "command": "cat /etc/hostname; echo hi"}))
        assert out["exit_code"] == 0 and out["stdout"].endswith("hi\n"), out
        print(f"run_command in {s['id']}: {out['stdout'].split()}")

    structured(await session.call_tool(
        "file_write", {"sandbox": a["id"], "path": "/tmp/note", "content": "from the host\n"}))
    r = await session.call_tool("file_read", {"sandbox": a["id"], "path": "/tmp/note"})
    assert not r.is_error and r.content[0].text == "from the host\n", r
    r = await session.call_tool("file_read", {"sandbox": b["id"], "path": "/tmp/note"})
    assert r.is_error, r
    print("file_write/file_read: the file is in one sandbox only")

    listed = structured(await session.call_tool("sandbox_list", {}))["sandboxes"]
    by_id = {s["id"]: s for s in listed}
    assert set(by_id) == {a["id"], b["id"]}, listed
    assert all(s["state"] == "running" for s in listed), listed
    assert 0 < by_id[b["id"]]["remaining_s"] <= 20, by_id[b["id"]]
    assert 3000 < by_id[a["id"]]["remaining_s"] <= 3600, by_id[a["id"]]
    print(f"sandbox_list: {[(s['id'], s['remaining_s']) for s in listed]}")

    r = await session.call_tool("sandbox_extend", {"id": a["id"], "ttl": "2h"})
    assert r.is_error and "max_ttl" in r.content[0].text, r
    ext = structured(await session.call_tool("sandbox_extend", {"id": a["id"], "ttl": "50m"}))
    assert 2990 <= ext["remaining_s"] <= 3000, ext
    print(f"sandbox_extend: {ext['id']} now expires {ext['expires']}")

    d = structured(await session.call_tool("sandbox_destroy", {"id": a["id"]}))
    assert d["destroyed"] is True, d
    print(f"sandbox_destroy: {a['id']} gone")

    # The other one expires on its own (ttl 20s).
    deadline = time.monotonic() + 120
    while True:
        listed = structured(await session.call_tool("sandbox_list", {}))["sandboxes"]
        if not listed:
            break
        assert time.monotonic() < deadline, listed
        await asyncio.sleep(1)
    print(f"{b['id']} expired")
    r = await session.call_tool("run_command", {"sandbox": b["id"], "argv": ["true"]})
    assert r.is_error and r.content[0].text.startswith(f"no sandbox `{b['id']}`"), r
    return {"destroyed": a["id"], "expired": b["id"]}


async def main(mode: str, *args: str) -> None:
    if mode == "stdio":
        params = StdioServerParameters(command=args[0], args=["mcp", "--host"],
                                       env=dict(os.environ))
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                out = await check(session)
    else:
        url, token = args
        headers = {"Authorization": f"Bearer {token}"}
        if hasattr(streamable_http, "streamable_http_client"):
            # SDK 2.x: headers go on the HTTP client it is given.
            from mcp.shared._httpx_utils import create_mcp_http_client
            async with create_mcp_http_client(headers=headers) as http:
                async with streamable_http.streamable_http_client(url, http_client=http) as streams:
                    async with ClientSession(streams[0], streams[1]) as session:
                        out = await check(session)
        else:
            async with streamable_http.streamablehttp_client(url, headers=headers) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    out = await check(session)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
