"""Drive headless Chromium (Debian's ``chromium``) over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: NUL-separated JSON on file descriptors 3 and 4), stdlib only.

``inspect_page(path, screenshot)`` loads a local page with the network disabled and returns the
console errors, uncaught exceptions, failed loads, the resources fetched and the size and
visibility of every table and image, and saves a full-page screenshot.
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
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")

# Every table and image: its box, whether it is shown, and for images whether they decoded.
_ELEMENTS_JS = """
(() => {
  const shown = (e) => {
    const s = getComputedStyle(e);
    return s.display !== 'none' && s.visibility !== 'hidden' && parseFloat(s.opacity) > 0;
  };
  const box = (e) => {
    const r = e.getBoundingClientRect();
    return {width: r.width, height: r.height, shown: shown(e)};
  };
  return JSON.stringify({
    tables: [...document.querySelectorAll('table')].map(t => ({
      id: t.id, rows: t.rows.length, ...box(t)})),
    images: [...document.querySelectorAll('img')].map(i => ({
      alt: i.alt, complete: i.complete, natural: [i.naturalWidth, i.naturalHeight], ...box(i)})),
    resources: performance.getEntriesByType('resource').map(r => r.name),
    title: document.title,
  });
})()
"""


def find_chromium() -> str | None:
    """The path of a Chromium binary, or ``None``."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class _Pipe:
    def __init__(self, binary: str, profile: str, width: int, height: int):
        to_browser_read, self._write = os.pipe()
        self._read, from_browser_write = os.pipe()

        def wire():  # in the child: the protocol wants fd 3 to read, fd 4 to write
            read_copy, write_copy = os.dup(to_browser_read), os.dup(from_browser_write)
            os.dup2(read_copy, 3)  # dup2 leaves 3 and 4 inheritable across exec
            os.dup2(write_copy, 4)

        self.process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--host-resolver-rules=MAP * ~NOTFOUND",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            preexec_fn=wire,
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self._read], [], [], left)
            if ready:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params=None, session=None, timeout: float = 30.0) -> dict:
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        for k, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(k)
        while True:
            message = self._receive(deadline)
            if message.get("method") == method:
                return message
            self.events.append(message)

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(timeout=10)
        except Exception:
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._write)
            os.close(self._read)


def _errors(events: list[dict]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            found.append(f"exception: {details.get('exception', {}).get('description') or details}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(
                "console: " + " ".join(str(a.get("value")) for a in params.get("args", []))
            )
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
    return found


def inspect_page(
    path: str | os.PathLike, screenshot: str | os.PathLike, width: int = 1400, height: int = 900
) -> dict:
    """Load the local page ``path`` in headless Chromium (no network), save a full-page PNG
    screenshot to ``screenshot`` and return ``errors`` (console errors, uncaught exceptions,
    failed loads), ``tables`` and ``images`` (box size, shown, decoded), ``resources`` (URLs
    fetched) and ``title``."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        browser = _Pipe(binary, profile, width, height)
        try:
            targets = browser.call("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            session = browser.call(
                "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}
            )["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                browser.call(f"{domain}.enable", session=session)
            browser.call("Page.navigate", {"url": url}, session=session)
            browser.wait_event("Page.loadEventFired")
            found = browser.call(
                "Runtime.evaluate",
                {"expression": _ELEMENTS_JS, "returnByValue": True},
                session=session,
            )
            report = json.loads(found["result"]["value"])
            size = browser.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
            shot = browser.call(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {
                        "x": 0,
                        "y": 0,
                        "width": size["width"],
                        "height": min(size["height"], 16000),
                        "scale": 1,
                    },
                },
                session=session,
                timeout=60,
            )
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            report["errors"] = _errors(browser.events)
            return report
        finally:
            browser.close()
