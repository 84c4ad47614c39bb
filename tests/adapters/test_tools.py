"""The tool runner on real parts: every run answers its call, whatever goes wrong, and a cancel stops it."""

from __future__ import annotations

import asyncio
import json
import socket

from kioskd.adapters.tools import ToolRunner
from kioskd.core import events as ev
from kioskd.core.knowledge import Entry, Knowledge
from kioskd.exhibit import HttpTool, Tools
from tests.conftest import LogRecorder, run, wait_until




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_failure_is_an_answer_and_a_failing_tool_is_said_once() -> None:
    """Arguments the HTTP client cannot encode (NaN), an unreachable system, junk arguments, an unknown tool:
    each run still posts a ToolResult with an error; the failing tool is logged once, the model's unknown name
    never as it is."""
    tool = HttpTool("tours", "d", {"type": "object"}, f"http://127.0.0.1:{free_port()}/tours", 1.0)
    results: list[ev.ToolResult] = []
    lines = LogRecorder()

    async def main() -> None:
        runner = ToolRunner(results.append, tools=Tools(http=(tool,)), log=lines)  # type: ignore[arg-type]
        for n, (name, args) in enumerate([("tours", '{"n": NaN}'), ("tours", "{}"), ("tours", "[1, 2"),
                                          ("x" * 500, "{}")]):
            runner.start(f"call_{n}", name, args)
        await wait_until(lambda: len(results) == 4, "four answers")
        await runner.close()

    run(main())
    errors = {r.call_id: json.loads(r.output)["error"] for r in results}
    assert errors["call_0"] == "the tool failed" and "cannot reach it" in errors["call_1"]
    assert errors["call_2"] == "the arguments are not JSON" and "there is no tool called" in errors["call_3"]
    warnings = [(e, f["name"]) for level, e, f in lines.records if level == "warning"]
    assert warnings == [("tool.failed", "tours"), ("tool.failed", "(unknown tool)")]


def test_the_lookup_answers_and_a_cancelled_run_answers_nothing() -> None:
    results: list[ev.ToolResult] = []
    knowledge = Knowledge([Entry("Age", "Laid around 320 AD.", ("old",))])

    silent = socket.socket()  # listens and never answers: the request hangs until cancelled
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)

    async def main() -> None:
        slow = HttpTool("slow", "d", {"type": "object"}, f"http://127.0.0.1:{silent.getsockname()[1]}/", 5.0)
        runner = ToolRunner(results.append, knowledge=knowledge, tools=Tools(http=(slow,)))
        runner.start("call_a", "lookup_exhibit_knowledge", '{"query": "how old is it"}')
        runner.start("call_b", "slow", "{}")
        await wait_until(lambda: len(results) == 1, "the lookup's answer")
        await runner.cancel("call_b")
        await asyncio.sleep(0.1)
        await runner.close()

    try:
        run(main())
    finally:
        silent.close()
    [result] = results
    assert result.call_id == "call_a" and json.loads(result.output)["entries"][0]["text"] == "Laid around 320 AD."
