"""A real headless Chromium (Debian's ``chromium`` package) driven over the DevTools protocol
with aiohttp's websocket client: load a page, collect every console error, uncaught exception
and failed load, wait for a condition, evaluate expressions (in order; a promise is awaited,
so one may click and wait), screenshot elements.

``.ci/run`` and the README's test command install ``chromium`` when it is missing; a missing
browser is an error here, never a skip.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no chromium on PATH: `apt-get install chromium` (.ci/run does)")


@dataclass
class PageResult:
    """What the page did: ``errors`` (console errors, exceptions, failed loads), the values of
    the evaluated expressions, PNG screenshots of the selected elements."""

    errors: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    shots: dict[str, bytes] = field(default_factory=dict)


class _Session:
    def __init__(self, ws) -> None:
        self.ws, self.next_id, self.pending, self.events = ws, 0, {}, []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)

    async def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict:
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method,
                                           "params": params}))
        reply = await asyncio.wait_for(future, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def wait_event(self, method: str, timeout: float = 60.0) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for event in self.events:
                if event["method"] == method:
                    return event
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no {method} within {timeout} s")


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                              for a in p.get("args", [])))
        elif e["method"] == "Runtime.exceptionThrown":
            out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
        elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"log: {entry.get('text')} {entry.get('url', '')}")
    return out


async def _wait_for(s: _Session, expression: str, timeout: float) -> None:
    """Poll ``expression`` until it is truthy (a single-page app rendering its data)."""
    end = time.monotonic() + timeout
    while True:
        reply = await s.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if reply["result"].get("value"):
            return
        if time.monotonic() > end:
            raise TimeoutError(f"not true within {timeout} s: {expression}")
        await asyncio.sleep(0.25)


async def _run(url: str, expressions: dict[str, str], selectors: list[str],
               port_file: Path, wait_for: str | None, timeout: float) -> PageResult:
    import aiohttp

    end = time.monotonic() + 60
    while not port_file.exists() or len(port_file.read_text().split()) < 2:
        if time.monotonic() > end:
            raise TimeoutError("chromium did not open its DevTools port within 60 s")
        await asyncio.sleep(0.1)
    port = port_file.read_text().split()[0]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t["type"] == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            s = _Session(ws)
            for domain in ("Runtime", "Log", "Page"):
                await s.call(f"{domain}.enable")
            await s.call("Page.navigate", url=url)
            await s.wait_event("Page.loadEventFired", timeout)
            if wait_for:
                await _wait_for(s, wait_for, timeout)
            await asyncio.sleep(0.5)  # late console messages and image decodes
            result = PageResult()
            for name, expr in expressions.items():
                reply = await s.call("Runtime.evaluate", expression=expr, returnByValue=True,
                                     awaitPromise=True, timeout=timeout)
                result.values[name] = reply["result"].get("value")
            for sel in selectors:
                result.shots[sel] = await _shot(s, sel)
            result.errors = _errors(s.events)
            s.reader.cancel()
            return result


async def _shot(s: _Session, selector: str) -> bytes:
    import base64

    js = (f"(() => {{const r = document.querySelector({json.dumps(selector)})"
          ".getBoundingClientRect(); return {x: r.left + scrollX, y: r.top + scrollY, "
          "width: r.width, height: r.height};})()")
    rect = (await s.call("Runtime.evaluate", expression=js, returnByValue=True))["result"]["value"]
    clip = {**rect, "scale": 1}
    reply = await s.call("Page.captureScreenshot", format="png", clip=clip,
                         captureBeyondViewport=True)
    return base64.b64decode(reply["data"])


def check_page(url: str, expressions: dict[str, str] | None = None,
               selectors: list[str] | None = None, wait_for: str | None = None,
               timeout: float = 60.0) -> PageResult:
    """Load ``url`` in a fresh headless Chromium and report what happened; with ``wait_for``
    (a JavaScript expression), evaluate and screenshot only once it is true (TimeoutError
    after ``timeout`` s)."""
    # Chromium's helper processes may still write to the profile for a moment after the
    # browser exits: they run in its own session (killed as a group) and a profile folder that
    # cannot be removed at once is left to the system's temp cleaning, never a test failure.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen(
            [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
             f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            return asyncio.run(_run(url, expressions or {}, selectors or [],
                                    Path(profile) / "DevToolsActivePort", wait_for, timeout))
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM Chromium's whole process group; SIGKILL what is left of it after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()  # reap the browser so only live helpers keep the group alive
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.wait()
                return
            time.sleep(0.05)
    proc.wait()


def image_stats(png: bytes) -> dict[str, float]:
    """Size, grey-level standard deviation and number of distinct colours of a PNG."""
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    return {"width": img.shape[1], "height": img.shape[0], "std": float(img.std()),
            "colours": colours}
