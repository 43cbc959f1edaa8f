"""``maata triton serve`` / ``TritonServer``: run a real ``tritonserver`` on a model repository.

The ``nvidia-pytriton`` wheel bundles ``tritonserver`` (2.51) with the python backend only. A
server needs three things from this environment, which ``server_env`` / ``backend_dir`` set up:

* a backend folder ``python/`` holding the wheel's ``libtriton_python.so``,
  ``triton_python_backend_utils.py`` and the stub built for this Python
  (``python_backend_stubs/3.X/triton_python_backend_stub``), assembled under ``work_dir``;
* ``LD_LIBRARY_PATH``: this interpreter's libpython folder first (else the stub loads another
  libpython and fails), then the wheel's bundled libraries (``nvidia_pytriton.libs``);
* ``PATH`` with this interpreter's ``bin`` first, so the stub runs with this environment's
  packages; the server runs in the folder that holds ``services`` and ``maata`` (the stub's
  ``sys.path`` starts with its working folder and ignores ``PYTHONPATH``), so the models come
  from this very tree.

    with TritonServer(repo) as server:      # free ports; waits until every model is ready
        server.grpc_url                     # "127.0.0.1:PORT" for tritonclient.grpc(.aio)
        server.metrics_url                  # Prometheus text (Triton's :8002 by default)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

import services

PROJECT_ROOT = Path(services.__file__).resolve().parent.parent


class TritonUnavailable(RuntimeError):
    """tritonserver is not installed here or did not start (the message says why)."""


def wheel_dir() -> Path:
    """The ``pytriton/tritonserver`` folder of the installed nvidia-pytriton wheel."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")  # located, not imported: its Python API's deps are not installed
    if spec is None or not spec.submodule_search_locations:
        raise TritonUnavailable("nvidia-pytriton is not installed (make venv installs it: "
                                "pip install --no-deps nvidia-pytriton==0.7.0)")
    path = Path(list(spec.submodule_search_locations)[0]).resolve() / "tritonserver"
    if not (path / "bin" / "tritonserver").is_file():
        raise TritonUnavailable(f"{path} has no bin/tritonserver")
    return path


def backend_dir(work_dir: Path) -> Path:
    """A backend directory (``work_dir/backends``) with ``python/`` assembled from the wheel."""
    src = wheel_dir()
    stub = src / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
        "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonUnavailable(f"the wheel has no python backend stub for Python "
                                f"{sys.version_info.major}.{sys.version_info.minor} ({stub})")
    dst = Path(work_dir) / "backends" / "python"
    dst.mkdir(parents=True, exist_ok=True)
    for f in (src / "backends" / "python" / "libtriton_python.so",
              src / "backends" / "python" / "triton_python_backend_utils.py", stub):
        target = dst / f.name
        if target.is_file() and target.stat().st_size == f.stat().st_size and \
                target.stat().st_mtime == f.stat().st_mtime:
            continue  # already there (a restart): a stub of the previous server may still be exiting
        tmp = target.with_name(target.name + ".tmp")
        shutil.copy2(f, tmp)
        os.replace(tmp, target)  # atomic, and possible while an old copy is still being executed
    return dst.parent


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its python stubs need (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    libs = wheel_dir().parent.parent / "nvidia_pytriton.libs"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """One ``tritonserver`` process over ``repo`` (gRPC, HTTP and metrics on ``host``; port 0:
    a free one). ``start`` waits until the server and every model are ready; ``stop`` ends it
    (SIGTERM, then SIGKILL); ``kill`` ends it at once (fault tests). Restartable on the same ports."""

    def __init__(self, repo: str | Path, *, grpc_port: int = 0, http_port: int = 0, metrics_port: int = 0,
                 host: str = "127.0.0.1", log_path: str | Path | None = None, verbose: int = 0,
                 work_dir: str | Path | None = None) -> None:
        self.repo = Path(repo).resolve()
        self.host = host
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self._tmp = None if work_dir is not None else tempfile.TemporaryDirectory(prefix="maata-triton-")
        self.work_dir = Path(work_dir) if work_dir is not None else Path(self._tmp.name)
        self.log_path = Path(log_path) if log_path else self.work_dir / "tritonserver.log"
        self.verbose = verbose
        self.proc: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        return [str(wheel_dir() / "bin" / "tritonserver"), f"--model-repository={self.repo}",
                f"--backend-directory={backend_dir(self.work_dir)}", f"--grpc-port={self.grpc_port}",
                f"--http-port={self.http_port}", f"--metrics-port={self.metrics_port}", "--allow-metrics=true",
                f"--grpc-address={self.host}", f"--http-address={self.host}", f"--metrics-address={self.host}",
                "--exit-on-error=true", "--strict-readiness=true", f"--log-verbose={self.verbose}"]

    def start(self, timeout_s: float = 180.0) -> TritonServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), env=server_env(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=PROJECT_ROOT)
        finally:
            log.close()
        self.wait_ready(timeout_s)
        return self

    def ready(self) -> bool:
        """Server live and every model loaded (HTTP ``/v2/health/ready``, strict readiness)."""
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise TritonUnavailable(f"tritonserver exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        self.stop()
        raise TritonUnavailable(f"tritonserver was not ready after {timeout_s:g} s; log:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM (Triton unloads the models and exits), SIGKILL after ``grace_s``."""
        self._signal(signal.SIGTERM, grace_s)

    def kill(self) -> None:
        """End the server and its python stubs at once, as a crash would."""
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: signal.Signals, grace_s: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # the python stubs share the process group; make sure none outlives the server
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def batch_stats(metrics_text: str, model: str) -> dict[str, float]:
    """From Triton's Prometheus text: the model's inferences (requests answered), executions
    (batches run) and their ratio, the mean batch size Triton formed."""
    counts = {"nv_inference_count": 0.0, "nv_inference_exec_count": 0.0, "nv_inference_request_success": 0.0,
              "nv_inference_request_failure": 0.0}
    for line in metrics_text.splitlines():
        if line.startswith("#"):
            continue
        for key in counts:
            if line.startswith(key + "{") and f'model="{model}"' in line:
                counts[key] += float(line.rsplit(" ", 1)[1])
    execs = counts["nv_inference_exec_count"]
    return {"inferences": counts["nv_inference_count"], "executions": execs,
            "mean_batch": counts["nv_inference_count"] / execs if execs else 0.0,
            "failures": counts["nv_inference_request_failure"]}
