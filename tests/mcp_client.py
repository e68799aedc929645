"""Drive `fort mcp` with the official MCP Python SDK (a client nobody here wrote).

usage: python3 tests/mcp_client.py FORT_BINARY ENDPOINT WORKDIR
ENDPOINT is an agent endpoint (`fort mcp --connect ENDPOINT`) or a VM address such as `vm.a`
(`fort mcp vm.a`; the manifest and state dir come from FORT_MANIFEST and FORT_STATE_DIR).
Also starts a background process (`process_start`) and reads it to its end with
`process_output`. Prints one line per check; exits non-zero on the first failure.
"""
import asyncio
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main(fort: str, endpoint: str, workdir: str) -> None:
    vm = endpoint.startswith("vm.")
    args = ["mcp", endpoint] if vm else ["mcp", "--connect", endpoint]
    # The SDK passes only a minimal environment unless told otherwise.
    params = StdioServerParameters(command=fort, args=args, env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            print(f"initialized: {init.server_info.name} protocol {init.protocol_version}")
            tools = await session.list_tools()
            names = [t.name for t in tools.tools]
            print(f"tools: {','.join(names)}")
            assert "run_command" in names and "file_read" in names, names

            result = await session.call_tool("run_command", {"argv": ["echo", "hello from the agent"]})
            assert not result.is_error, result
            out = result.structured_content["stdout"]
            print(f"run_command stdout: {out.strip()}")
            assert out == "hello from the agent\n", out

            # A background process, read incrementally from a cursor until its end.
            result = await session.call_tool(
                "process_start", {"command": "echo one; sleep 0.3; echo two"}
            )
            assert not result.is_error, result
            pid = result.structured_content["id"]
            cursor, text = 0, ""
            while True:
                result = await session.call_tool(
                    "process_output", {"id": pid, "cursor": cursor, "wait_ms": 10000}
                )
                assert not result.is_error, result
                out = result.structured_content
                text += "".join(c["data"] for c in out["chunks"])
                cursor = out["cursor"]
                if out["eof"]:
                    break
            print(f"process_output: {text.split()} exit code {out['exit']['exit_code']}")
            assert text == "one\ntwo\n", text

            if vm:
                result = await session.call_tool("run_command", {"argv": ["uname", "-r"]})
                assert not result.is_error, result
                print(f"uname -r: {result.structured_content['stdout'].strip()}")
                return

            path = os.path.join(workdir, "note.txt")
            with open(path, "w") as f:
                f.write("read me\n")
            result = await session.call_tool("file_read", {"path": path})
            assert not result.is_error, result
            text = result.content[0].text
            print(f"file_read: {text.strip()}")
            assert text == "read me\n", text


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
    print("ok")
