"""Run a private ``redis-server`` child process, for tests and for ``maata serve``.

The server listens on 127.0.0.1 only, keeps its data in one directory with the append-only
file on (``--appendonly yes --appendfsync everysec``: at most one second of writes lost on a
crash, none on a clean stop) and no RDB snapshots, so stopping and starting it again on the same
directory brings every session back. It is killed when this process exits.

    with RedisServer() as server:          # free port, temporary directory
        store = RedisSessionStore(server.url)
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

READY_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis on 127.0.0.1:``port`` answers PING with PONG (not LOADING, not refused)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` child process with AOF persistence in ``directory``.

    ``directory`` defaults to a fresh temporary one, removed by ``close()``; ``port`` defaults
    to a free one and is kept across ``restart()`` so clients reconnect to the same URL.
    """

    def __init__(self, directory: str | Path | None = None, port: int | None = None,
                 executable: str = "redis-server") -> None:
        found = shutil.which(executable)
        if found is None:
            raise FileNotFoundError(
                f"{executable!r} is not on PATH; the Redis session store and its tests need it "
                "(Debian/Ubuntu: apt-get install redis-server)")
        self.executable = found
        self._owns_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="maata-redis-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._pick_port = port is None  # until the first start succeeds, a clash may pick another
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        """The redis-server command line: loopback only, AOF on, no RDB snapshots."""
        return [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
                "--logfile", str(self.log_path)]

    def start(self, timeout: float = READY_TIMEOUT_SECONDS) -> RedisServer:
        """Start the server and return once it answers PING (its AOF fully loaded)."""
        if self.running:
            return self
        for attempt in range(3):
            self._process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL)
            atexit.register(self.stop)
            try:
                self._wait_ready(timeout)
                break
            except RuntimeError:
                # Another process took the free port between free_port() and the bind: try another.
                if not (self._pick_port and attempt < 2 and "Address already in use" in self._log_tail()):
                    raise
                self.port = free_port()
        self._pick_port = False
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ping(self.port):
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server did not answer PING within {timeout} s:\n{self._log_tail()}")
            time.sleep(0.02)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop the server cleanly (SIGTERM: Redis flushes the AOF), killing it if it hangs."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port and directory (data reloaded from the AOF)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory if this object created it."""
        self.stop()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
