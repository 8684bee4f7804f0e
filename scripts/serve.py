"""Start Triton Inference Server on the model repository and keep it running until interrupted.

    python scripts/serve.py                       # ports 8000 (HTTP), 8001 (gRPC), 8002 (metrics)
    python scripts/serve.py --grpc-port 0 ...     # 0 picks a free port

Importable for tests and demos:

    with TritonServer("model_repository", grpc_port=0) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)

The binary is, in order: `--tritonserver`, `$TRITONSERVER`, `/opt/tritonserver/bin/tritonserver`
(the NGC container) or the one bundled in the nvidia-pytriton wheel. The wheel ships the Python
backend without its stub, which exists once per Python version, so for it we assemble a backend
directory of symlinks that pairs the backend with the stub of the interpreter running this script.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

NGC_TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"


class ServerError(RuntimeError):
    """The server exited or did not become ready; the message ends with its log tail."""


def free_port() -> int:
    # The OS picks an unused port; it could be taken again before Triton binds it, which is
    # rare enough for tests and demos (a failed bind shows up as a startup error with the log).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pytriton_dist() -> Path | None:
    """The tritonserver tree inside the installed nvidia-pytriton wheel (needed outside the NGC
    container). Found, not imported: the package's own `__init__` pulls in its Python API and every
    dependency of that (sh, typer, tritonclient's HTTP client), none of which the binary needs."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "tritonserver"


def find_tritonserver(explicit: str | os.PathLike[str] | None = None) -> Path:
    for candidate in (explicit, os.environ.get("TRITONSERVER")):
        if candidate:
            return Path(candidate)
    if NGC_TRITONSERVER.exists():
        return NGC_TRITONSERVER
    dist = _pytriton_dist()
    if dist is not None and (dist / "bin" / "tritonserver").exists():
        return dist / "bin" / "tritonserver"
    raise ServerError(
        "no tritonserver found: install nvidia-pytriton, use the NGC image or pass --tritonserver"
    )


def _pytriton_backends(dist: Path, into: Path) -> Path:
    """A backend directory whose python/ holds the wheel's backend plus this interpreter's stub."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    python_dir = into / "python"
    python_dir.mkdir(parents=True)
    for source in (*(dist / "backends" / "python").iterdir(), stub):
        if source.is_file():
            (python_dir / source.name).symlink_to(source)
    return into


class TritonServer:
    """A tritonserver process: started and made ready by `start()`, stopped by `stop()`."""

    def __init__(
        self,
        repository: str | os.PathLike[str] = DEFAULT_REPOSITORY,
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        host: str = "127.0.0.1",
        tritonserver: str | os.PathLike[str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        log_verbose: int = 0,
        exit_timeout_s: int = 30,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.repository = Path(repository).resolve()
        # Port 0 means "any free port", resolved now so the URLs are known before start().
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.host = host
        self.binary = find_tritonserver(tritonserver)
        self.log_file = Path(log_file) if log_file else None
        self.log_verbose = log_verbose
        self.exit_timeout_s = exit_timeout_s
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self._scratch: Path | None = None
        self._log_handle: object | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self, backend_directory: Path | None) -> list[str]:
        cmd = [
            str(self.binary),
            f"--model-repository={self.repository}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
            # Python-backend tensors travel through /dev/shm; start larger than the 1 MiB default so
            # a batch of encoder states (1500 x d_model floats per window) needs no regrowth.
            "--backend-config=python,shm-default-byte-size=67108864",
        ]
        if backend_directory is not None:
            cmd.append(f"--backend-directory={backend_directory}")
        return [*cmd, *self.extra_args]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The Python stub embeds whichever python3 comes first on PATH: make it this interpreter's,
        # so the stub sees the same site-packages (torch, transformers, spec_whisper).
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # The stub links libpython dynamically; put this interpreter's own first, or the loader may
        # pick a system libpython of another patch release whose symbols our extension modules lack
        # (seen here: Debian's 3.11.2 under pyenv's 3.11.7 fails to import _ssl).
        libs = (
            [Path(sysconfig.get_config_var("LIBDIR") or "")]
            if sysconfig.get_config_var("Py_ENABLE_SHARED")
            else []
        )
        dist = _pytriton_dist()
        if dist is not None and self.binary.is_relative_to(dist):
            libs += [dist.parent.parent / "nvidia_pytriton.libs", dist / "lib"]
        paths = [str(p) for p in libs if p.is_dir()]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*paths, *filter(None, [env.get("LD_LIBRARY_PATH")])])
        return env

    def start(self, timeout_s: float = 300.0) -> TritonServer:
        if self.process is not None:
            raise ServerError("already started")
        self._scratch = Path(tempfile.mkdtemp(prefix="spec_whisper_triton_"))
        backend_directory = None
        dist = _pytriton_dist()
        if dist is not None and self.binary.is_relative_to(dist):
            backend_directory = _pytriton_backends(dist, self._scratch / "backends")
        log_path = self.log_file or self._scratch / "tritonserver.log"
        self.log_file = log_path
        self._log_handle = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command(backend_directory),
            env=self.environment(),
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            # The model.py files import spec_whisper. The stub's interpreter ignores PYTHONPATH (its
            # sys.path is the interpreter's own, the model's folder and the working directory), so a
            # source checkout that is not pip-installed is found as the server's working directory.
            cwd=PROJECT_ROOT,
            # Own process group: Ctrl-C in a terminal reaches us, and we forward it once,
            # instead of the server receiving it twice.
            start_new_session=True,
        )
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def is_ready(self) -> bool:
        url = f"http://{self.host}:{self.http_port}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"tritonserver exited during startup\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.5)
        raise ServerError(f"tritonserver not ready after {timeout_s:.0f} s\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM, then wait for the models to unload; SIGKILL the group only if it overruns."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout=self.exit_timeout_s + 15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                code = self.process.wait()
            self.process = None
        if self._log_handle is not None:
            self._log_handle.close()  # type: ignore[attr-defined]
            self._log_handle = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch / "backends", ignore_errors=True)
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--http-port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--metrics-port", type=int, default=8002, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1", help="address used to probe readiness")
    parser.add_argument("--tritonserver", help="path to the tritonserver binary")
    parser.add_argument("--log-file", type=Path, help="server log (default: a temporary file)")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--exit-timeout", type=int, default=30, help="seconds to let models unload")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument(
        "--prepare",
        metavar="ARGS",
        help="first run scripts/prepare_models.py with these arguments, e.g. --prepare=--offline "
        "(a no-op when the models are already there; the container uses it to fill a models volume)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from prepare_models import main as prepare_models

        if code := prepare_models([*shlex.split(args.prepare), "--repository", str(args.repository)]):
            return code
    server = TritonServer(
        args.repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        host=args.host,
        tritonserver=args.tritonserver,
        log_file=args.log_file,
        log_verbose=args.log_verbose,
        exit_timeout_s=args.exit_timeout,
    )
    stop_requested = False
    ready = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True
        print(f"received {signal.Signals(signum).name}; stopping tritonserver", file=sys.stderr, flush=True)
        if not ready:
            # Break out of the readiness wait; start() stops the half-started server on the way out.
            raise KeyboardInterrupt

    # Installed before start() so an interrupt during the (long) model load still shuts down cleanly.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print(f"starting {server.binary}", file=sys.stderr, flush=True)
    try:
        server.start(timeout_s=args.startup_timeout)
    except KeyboardInterrupt:
        return 130
    except ServerError as exc:
        print(exc, file=sys.stderr)
        return 1
    ready = True
    print(
        f"ready: gRPC {server.grpc_url}  HTTP {server.http_url}  metrics {server.metrics_url}\n"
        f"log: {server.log_file}",
        file=sys.stderr,
        flush=True,
    )
    assert server.process is not None
    while not stop_requested and server.process.poll() is None:
        time.sleep(0.5)
    if not stop_requested:
        print(f"tritonserver exited on its own\n{server.log_tail()}", file=sys.stderr)
    code = server.stop()
    return 0 if stop_requested else (code or 1)


if __name__ == "__main__":
    sys.exit(main())
