"""Load a local HTML file in headless Chromium and report what a reader's browser would see.

Chromium is driven over the DevTools protocol (CDP) on 127.0.0.1 with ``websocket-client``:
console messages, uncaught exceptions, browser log errors, every network request, and for
every ``<img>`` whether it decodes (``HTMLImageElement.decode()``) and its natural size.
CI installs Chromium from the Debian packages (see ``.ci/run``); elsewhere tests skip when it
is missing unless ``PYSCOREPEN_REQUIRE_BROWSER=1`` (then they fail).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-extensions",
         "--disable-default-apps", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]

IMAGES_JS = """Promise.all(Array.from(document.images).map(img => img.decode().then(
    () => ({ok: true, width: img.naturalWidth, height: img.naturalHeight, alt: img.alt}),
    err => ({ok: false, width: img.naturalWidth, height: img.naturalHeight, alt: img.alt, error: String(err)}))))"""


def chromium_or_skip() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("PYSCOREPEN_REQUIRE_BROWSER") == "1":
        pytest.fail("Chromium is required (PYSCOREPEN_REQUIRE_BROWSER=1) but not installed")
    pytest.skip("Chromium not installed (apt-get install chromium); CI installs it")


class _CDP:
    def __init__(self, ws_url: str):
        import websocket
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"CDP {method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict:
        for i, msg in enumerate(self.events):
            if msg.get("method") == method:
                return msg
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == method:
                return msg
        raise TimeoutError(method)

    def close(self) -> None:
        self.ws.close()


def _stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM Chromium's whole process group, SIGKILL it after 20 s, and reap the browser."""
    def signal_group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    signal_group(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    signal_group(signal.SIGKILL)        # helpers that outlived the browser
    proc.wait()


def _remove_profile(profile: str, attempts: int = 50) -> None:
    """Remove the throwaway profile. A helper killed a moment ago may still be closing a file in
    it ("Directory not empty" from rmtree), so retry for up to ~5 s before giving up."""
    for attempt in range(attempts):
        try:
            shutil.rmtree(profile)
            return
        except FileNotFoundError:
            return
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)


def load_page(html_path: Path, timeout: float = 90.0) -> dict:
    """Open ``html_path`` in a fresh headless Chromium; returns
    ``{'console': [...], 'exceptions': [...], 'log_errors': [...], 'requests': [urls], 'images': [...],
    'title': str}``."""
    binary = chromium_or_skip()
    profile = tempfile.mkdtemp(prefix="pyscorepen-chromium-")
    try:
        # Its own session, so that teardown reaches Chromium's helper processes too: they write
        # into the profile after the browser process itself has exited.
        proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not (port_file.is_file() and port_file.read_text().strip()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Chromium did not start (exit {proc.poll()})")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
            page = next(t for t in targets if t.get("type") == "page")
            cdp = _CDP(page["webSocketDebuggerUrl"])
            try:
                for domain in ("Page", "Runtime", "Log", "Network"):
                    cdp.call(f"{domain}.enable")
                cdp.call("Page.navigate", url=html_path.resolve().as_uri())
                cdp.wait_for("Page.loadEventFired", timeout)
                images = cdp.call("Runtime.evaluate", expression=IMAGES_JS, awaitPromise=True,
                                  returnByValue=True)["result"]["value"]
                title = cdp.call("Runtime.evaluate", expression="document.title", returnByValue=True)["result"]["value"]
                events = cdp.events
            finally:
                cdp.close()
        finally:
            _stop_process_group(proc)
    finally:
        _remove_profile(profile)
    by = lambda m: [e["params"] for e in events if e.get("method") == m]
    return {
        "console": [(c["type"], " ".join(str(a.get("value", a.get("description", ""))) for a in c["args"]))
                    for c in by("Runtime.consoleAPICalled")],
        "exceptions": [e["exceptionDetails"].get("text", "") for e in by("Runtime.exceptionThrown")],
        "log_errors": [e["entry"]["text"] for e in by("Log.entryAdded") if e["entry"]["level"] == "error"],
        "requests": [r["request"]["url"][:80] for r in by("Network.requestWillBeSent")],
        "failed_requests": [r.get("errorText") for r in by("Network.loadingFailed")],
        "images": images,
        "title": title,
    }


def page_problems(result: dict) -> list[str]:
    """Everything that makes a self-contained report look broken to a reader."""
    problems = [f"console {kind}: {text}" for kind, text in result["console"] if kind in ("error", "warning", "assert")]
    problems += [f"exception: {text}" for text in result["exceptions"]]
    problems += [f"log error: {text}" for text in result["log_errors"]]
    problems += [f"failed request: {text}" for text in result["failed_requests"]]
    problems += [f"external request: {url}" for url in result["requests"]
                 if not url.startswith(("file:", "data:"))]
    problems += [f"image does not decode: {img['alt']} ({img.get('error')})" for img in result["images"]
                 if not img["ok"] or img["width"] == 0 or img["height"] == 0]
    return problems
