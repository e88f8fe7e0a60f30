"""Headless Chromium over the DevTools protocol, standard library only.

Why a pipe and not ``--dump-dom``/``--screenshot``: the one-shot flags cannot
report console errors (CSP violations, broken images) or read back what the
browser decoded, and the page's own CSP forbids the probe script they would
need. ``--remote-debugging-pipe`` speaks CDP as NUL-terminated JSON on file
descriptors 3 (commands in) and 4 (replies and events out): no websocket
client, no port, nothing to install beyond Chromium itself.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio", "--remote-debugging-pipe"]


def chromium_or_skip() -> str:
    """The Chromium binary; a skip where it is absent, a failure where ``CI=true``.

    CI installs Chromium (.ci/run), so a missing binary there is a broken install
    that must show up red, not as a quiet skip.
    """
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("chromium not installed but CI=true: .ci/run should have installed it")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


@dataclass
class PageLoad:
    """What a page did in the browser: console/log errors, the DOM, the images as decoded."""

    errors: list[str]
    text: str
    html: str
    images: list[dict[str, Any]]
    screenshot: bytes


class _Pipe:
    """One CDP connection: numbered commands, replies matched by id, events queued."""

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int, deadline: float) -> None:
        self.proc, self.out, self.inp, self.deadline = proc, to_browser, from_browser, deadline
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self) -> dict:
        while b"\0" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self.inp], [], [], left)
            if ready:
                chunk = os.read(self.inp, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
                self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.out, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for i, ev in enumerate(self.events):
            if ev["method"] == method:
                return self.events.pop(i)
        while True:
            ev = self._read_message()
            if ev.get("method") == method:
                return ev
            if "method" in ev:
                self.events.append(ev)


_IMAGES_JS = ("JSON.stringify([...document.images].map(i => ({complete: i.complete, width: i.naturalWidth, "
              "height: i.naturalHeight, data: i.src.startsWith('data:image/png;base64,')})))")


def _errors(events: list[dict]) -> list[str]:
    """Console errors/warnings, uncaught exceptions and browser log errors (CSP, failed loads)."""
    out = []
    for ev in events:
        p = ev.get("params", {})
        if ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in {"error", "warning", "assert"}:
            out.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description")))
                                                         for a in p.get("args", [])))
        elif ev["method"] == "Runtime.exceptionThrown":
            out.append("exception: " + p.get("exceptionDetails", {}).get("text", ""))
        elif ev["method"] == "Log.entryAdded" and p["entry"].get("level") in {"error", "warning"}:
            out.append(f"log.{p['entry']['level']} ({p['entry'].get('source')}): {p['entry'].get('text')}")
    return out


def load_page(chromium: str, page: Path, *, width: int = 1200, timeout: float = 30.0) -> PageLoad:
    """Open ``page`` in a fresh headless profile, wait for load, read it back, screenshot it whole."""
    to_r, to_w = os.pipe()      # we write commands, chromium reads fd 3
    from_r, from_w = os.pipe()  # chromium writes fd 4, we read

    def child_fds() -> None:  # runs before Popen closes fds, so pass_fds names the targets 3 and 4
        os.dup2(to_r, 3)
        os.dup2(from_w, 4)

    # stderr to a file, not a pipe nobody drains (a full pipe would stall the browser)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, \
            open(Path(profile).parent / f"{Path(profile).name}.stderr", "w+b") as log:
        proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                pass_fds=(3, 4), preexec_fn=child_fds)
        os.close(to_r)
        os.close(from_w)
        cdp = _Pipe(proc, to_w, from_r, time.monotonic() + timeout)
        try:
            target = cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            sid = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                cdp.send(f"{domain}.enable", session=sid)
            cdp.send("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=sid)
            cdp.send("Page.navigate", {"url": page.resolve().as_uri()}, session=sid)
            cdp.wait_for("Page.loadEventFired")

            def js(expr: str) -> Any:
                res = cdp.send("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=sid)
                if "exceptionDetails" in res:
                    raise RuntimeError(f"evaluate {expr[:40]!r}: {res['exceptionDetails'].get('text')}")
                return res["result"]["value"]

            images = json.loads(js(_IMAGES_JS))
            text = js("document.body.innerText")
            html = js("document.documentElement.outerHTML")
            shot = cdp.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                            session=sid)["data"]
            # log entries for the load can trail the load event by a moment: one round trip flushes them
            js("1")
            errors = _errors(cdp.events)
            try:
                cdp.send("Browser.close")
            except RuntimeError:
                pass  # the browser may close the pipe before it answers
        except (RuntimeError, TimeoutError) as err:
            log.seek(0)
            raise RuntimeError(f"{err}; chromium stderr ends: {log.read()[-1500:].decode(errors='replace')}") from err
        finally:
            os.close(to_w)
            os.close(from_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.unlink(log.name)
    return PageLoad(errors=errors, text=text, html=html, images=images, screenshot=base64.b64decode(shot))
