"""Drive a real headless Chromium through a call on the browser front end (tests, the browser
latency benchmark, screenshots): fake microphone capture from a WAV file, nothing downloaded.

WebRTC between a browser and aiortc on one machine needs both on the same interface. In a fresh
network namespace with only ``lo`` up, Chromium and aioice both use 127.0.0.1 (the gateway is
told so with ``webrtc.host_addresses: ["127.0.0.1"]``): ``loopback_netns_command`` wraps a
command in ``unshare -n`` for that, and ``in_netns`` tells a process whether it runs there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

NETNS_ENV = "MAATA_LOOPBACK_NETNS"
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def loopback_netns_command(argv: list[str]) -> list[str]:
    """``argv`` run in a new network namespace with only loopback up (needs root or user namespaces)."""
    return ["unshare", "-n", "--", "sh", "-c", f'ip link set lo up && {NETNS_ENV}=1 exec "$@"', "sh", *argv]


def in_netns() -> bool:
    return os.environ.get(NETNS_ENV) == "1"


def find(candidates: tuple[str, ...], name: str) -> str:
    for path in candidates:
        if Path(path).exists():
            return path
    raise FileNotFoundError(f"{name} not found (tried {', '.join(candidates)}): apt-get install chromium chromium-driver")


class Browser:
    """One headless Chromium whose microphone plays ``wav`` (16-bit PCM WAV, looped)."""

    def __init__(self, wav: str | Path, window: tuple[int, int] = (480, 1000)) -> None:
        os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not download anything
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self._profile = tempfile.mkdtemp(prefix="maata-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = find(CHROMIUM, "chromium")
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--user-data-dir={self._profile}", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-default-apps",
                     "--disable-extensions", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                     f"--use-file-for-fake-audio-capture={Path(wav).resolve()}",
                     "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
                     f"--window-size={window[0]},{window[1]}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(find(CHROMEDRIVER, "chromedriver")), options=options)
        self.driver.set_script_timeout(30)

    def open(self, url: str, timeout_s: float = 15.0) -> None:
        self.driver.get(url)
        self.wait("return window.maata && window.maata.loaded === true", timeout_s)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, condition: str, timeout_s: float = 15.0, poll_s: float = 0.1) -> Any:
        """Poll JS ``condition`` (a ``return ...`` statement) until truthy; TimeoutError with the page state."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.js(condition)
            if value:
                return value
            if time.monotonic() > deadline:
                state = self.js("return window.maata ? {state: maata.state, error: maata.error, "
                                "events: maata.events.slice(-5)} : null")
                raise TimeoutError(f"browser: {condition!r} not true after {timeout_s:g} s; page: {state}")
            time.sleep(poll_s)

    def console(self) -> list[str]:
        try:
            return [entry["message"] for entry in self.driver.get_log("browser")]
        except Exception:
            return []

    def screenshot(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Browser", "NETNS_ENV", "in_netns", "loopback_netns_command"]
