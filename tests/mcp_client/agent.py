"""An AI agent's side of orchestrator-mock's MCP server, written with the
official MCP Python SDK (`mcp` from PyPI) and nothing of this project.

Each run opens its own MCP connection (streamable HTTP) to URL, sending the
admin token from the environment variable MCP_TOKEN as a bearer token (no
variable: no Authorization header), does one thing and prints one JSON
document on stdout for the Rust test (tests/tests/mcp.rs) to check:

    agent.py URL list                    the tools: name, description, inputSchema, annotations
    agent.py URL call TOOL ARGS_JSON     the call's isError, text and structuredContent
    agent.py URL refused                 connects and lists tools, expecting a refusal:
                                         {"refused": true, "error": "...", "http_statuses": [...]}
                                         (exit 0), or exit 1 when it was not refused

URL "stdio" instead of an http(s) URL: start the command given as a JSON list
in MCP_STDIO_COMMAND and speak MCP over its stdin and stdout (the stdio
transport); MCP_TOKEN then goes to it as ORCHESTRATOR_MOCK_TOKEN.

Exit status 0 when the run did what was asked (a tool error is a result, not
a failure), 1 otherwise with the error on stderr.
"""

import asyncio
import json
import os
import sys

import httpx2
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client


# The HTTP status of every response, in order: the SDK reports a refused
# request as a JSON-RPC error without its status.
STATUSES: list[int] = []


async def record_status(response: httpx2.Response) -> None:
    STATUSES.append(response.status_code)


def http_client() -> httpx2.AsyncClient:
    headers = {}
    token = os.environ.get("MCP_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx2.AsyncClient(
        headers=headers,
        timeout=httpx2.Timeout(30.0, read=120.0),
        event_hooks={"response": [record_status]},
    )


async def with_session(url: str, action):
    if url == "stdio":
        command = json.loads(os.environ["MCP_STDIO_COMMAND"])
        env = {}
        if os.environ.get("MCP_TOKEN"):
            env["ORCHESTRATOR_MOCK_TOKEN"] = os.environ["MCP_TOKEN"]
        server = StdioServerParameters(command=command[0], args=command[1:], env=env)
        async with stdio_client(server) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await action(session)
    async with http_client() as client:
        async with streamable_http_client(url, http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await action(session)


async def list_tools(session: ClientSession):
    result = await session.list_tools()
    tools = []
    for tool in result.tools:
        tools.append(
            {
                "name": tool.name,
                "description": tool.description,
                "inputSchema": tool.input_schema,
                "annotations": None
                if tool.annotations is None
                else tool.annotations.model_dump(by_alias=True, exclude_none=True),
            }
        )
    return {"tools": tools}


def call(name: str, arguments: dict):
    async def action(session: ClientSession):
        result = await session.call_tool(name, arguments)
        texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
        return {
            "isError": bool(result.is_error),
            "text": texts,
            "structuredContent": result.structured_content,
        }

    return action


def error_text(error: BaseException) -> str:
    """The messages of an exception and of everything it groups or wraps."""
    parts = [f"{type(error).__name__}: {error}"]
    for inner in getattr(error, "exceptions", ()) or ():
        parts.append(error_text(inner))
    if error.__cause__ is not None:
        parts.append(error_text(error.__cause__))
    return " | ".join(parts)


async def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 1
    url, command = argv[1], argv[2]
    if command == "list":
        out = await with_session(url, list_tools)
    elif command == "call" and len(argv) == 5:
        out = await with_session(url, call(argv[3], json.loads(argv[4])))
    elif command == "refused":
        try:
            listed = await asyncio.wait_for(with_session(url, list_tools), 60)
        except BaseException as error:  # the SDK raises groups of HTTP errors
            out = {"refused": True, "error": error_text(error), "http_statuses": STATUSES}
        else:
            print(f"expected a refusal, got the tools: {listed}", file=sys.stderr)
            return 1
    else:
        print(__doc__, file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv)))
