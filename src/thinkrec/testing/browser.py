"""Helpers for driving the served page in a real browser (the page test, the screenshot benchmark).

:func:`running_server` runs an app with uvicorn in a background thread on a free local port; :func:`headless_chrome`
makes a headless Chromium driven by Selenium with explicit binary paths, so Selenium Manager (which downloads a
browser and fails offline) is never used. ``.ci/run`` installs both binaries with
``apt-get install chromium chromium-driver``.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
APT_HINT = "install them with `apt-get install chromium chromium-driver` (what .ci/run does)"


def missing_browser() -> str | None:
    """The first of the Chromium / chromedriver binaries that is missing, or None when both are there."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).is_file():
            return path
    return None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int | None = None,
                   ready_timeout_s: float = 120.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields its base URL once ``/readyz`` answers 200."""
    import uvicorn

    port = port or _free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    base = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if not thread.is_alive():
                raise RuntimeError(f"uvicorn exited before {base}/readyz answered")
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or 503 while warming up
            if time.monotonic() > deadline:
                raise RuntimeError(f"{base}/readyz did not answer 200 within {ready_timeout_s:.0f} s")
            time.sleep(0.1)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def headless_chrome(width: int = 1280, height: int = 1000) -> Any:
    """A headless Chromium ``webdriver.Chrome`` at ``/usr/bin/chromium`` driven by ``/usr/bin/chromedriver``.

    Raises RuntimeError naming the missing binary (and the apt-get packages) when either is absent."""
    missing = missing_browser()
    if missing is not None:
        raise RuntimeError(f"{missing} not found: {APT_HINT}")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
