"""Running the real service pieces in tests: a redis-server on a temp unix socket (stopped by pid),
and `segd watch` / `segd worker` as subprocesses with a random-weights tiny model."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import TINY


class Service:
    """A temp site (inbox/outbox/state/models) and the processes serving it."""

    def __init__(self, root: Path, checkpoint: Path | None = None, **env: str):
        self.root = root
        self.inbox, self.outbox, self.state = root / "inbox", root / "outbox", root / "state"
        for folder in (self.inbox, self.outbox, self.state):
            folder.mkdir(parents=True, exist_ok=True)
        self.socket = Path(f"/tmp/segd-test-{os.getpid()}-{abs(hash(str(root))) % 10**8}.sock")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SEGD_")}
        self.env.update(
            TINY,
            SEGD_PATHS__INBOX=str(self.inbox),
            SEGD_PATHS__OUTBOX=str(self.outbox),
            SEGD_PATHS__STATE=str(self.state),
            SEGD_PATHS__MODELS=str(root / "models"),
            SEGD_MODEL__CHECKPOINT=str(checkpoint) if checkpoint else "random",
            SEGD_REDIS__URL=f"unix://{self.socket}",
            SEGD_WATCHER__SETTLE_S="0.3",
            SEGD_WATCHER__SETTLE_SCAN_S="1.0",
            SEGD_WATCHER__RESCAN_INTERVAL_S="1.0",
            SEGD_WATCHER__RECONCILE_INTERVAL_S="2.0",
            SEGD_SAMPLING__POINTS="8",
            **env,
        )
        self.redis: subprocess.Popen | None = None
        self.procs: dict[str, subprocess.Popen] = {}

    # --- redis ------------------------------------------------------------------------------
    def start_redis(self, appendonly: bool = True) -> None:
        from segd.up import redis_binary

        data = self.root / "redis-data"
        data.mkdir(exist_ok=True)
        args = [
            redis_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(data),
            "--appendonly",
            "yes" if appendonly else "no",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--loglevel",
            "warning",
        ]
        self.redis = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.socket.exists() and self.redis_client().ping():
                return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def redis_client(self):
        from redis import Redis

        return Redis(unix_socket_path=str(self.socket))

    def kill_redis(self) -> None:
        """SIGKILL redis-server by pid (no graceful flush)."""
        os.kill(self.redis.pid, signal.SIGKILL)
        self.redis.wait()

    # --- segd processes ---------------------------------------------------------------------
    def start(self, role: str, *args: str, key: str | None = None) -> subprocess.Popen:
        """Start `segd <role> <args>`; `key` (default: the role) names it in procs and its log."""
        key = key or role
        log = open(self.root / f"{key}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "segd", role, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[key] = proc
        return proc

    def stop(self, role: str, sig=signal.SIGTERM, timeout: float = 60) -> int:
        proc = self.procs.pop(role)
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout=timeout)

    def log(self, role: str) -> str:
        path = self.root / f"{role}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for role in list(self.procs):
            try:
                self.stop(role, timeout=30)
            except subprocess.TimeoutExpired:
                self.procs.get(role) and self.procs[role].kill()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(timeout=10)
        self.socket.unlink(missing_ok=True)

    # --- observations -----------------------------------------------------------------------
    def results(self, folder: Path | None = None, prefix: str = "") -> dict[str, dict]:
        """Published result folders: their path in the outbox (`stem`, `visit/stem`) → manifest.
        A folder without manifest.json mirrors an inbox folder: its results are listed too."""
        out = {}
        for entry in (folder or self.outbox).iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            manifest = entry / "manifest.json"
            if manifest.exists():
                out[prefix + entry.name] = json.loads(manifest.read_text())
            else:
                out.update(self.results(entry, f"{prefix}{entry.name}/"))
        return out

    def segd(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a `segd` command against this site; its output as text."""
        return subprocess.run(
            [sys.executable, "-m", "segd", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def folders(self, kind: str) -> list[Path]:
        root = self.state / kind
        return (
            sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []
        )

    def wait_for(self, predicate, timeout: float = 120, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for role, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(
                        f"{role} exited with {proc.returncode}:\n{self.log(role)[-3000:]}"
                    )
            time.sleep(0.1)
        logs = "\n".join(f"--- {r}\n{self.log(r)[-3000:]}" for r in ("watch", "worker"))
        raise AssertionError(f"timed out waiting for {what}\n{logs}")


# --- inputs -------------------------------------------------------------------------------------
def picture(seed: int, size=(96, 128), fmt: str = "JPEG", quality: int = 90) -> bytes:
    """A small distinct picture of noise (distinct bytes → distinct job ids), (H, W) = size."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = (rng.uniform(0, 1, (*size, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    options = {"quality": quality} if fmt == "JPEG" else {}
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def write_slowly(path: Path, data: bytes) -> None:
    """One open, many small writes with pauses, one close (a slow network copy)."""
    with open(path, "wb") as handle:
        for start in range(0, len(data), 1024):
            handle.write(data[start : start + 1024])
            handle.flush()
            time.sleep(0.02)


# --- segd up ------------------------------------------------------------------------------------
def start_up(cwd: Path, env: dict, output) -> subprocess.Popen:
    """`segd up` in `cwd`, in a process group of its own, so `end_up` can stop everything it
    started even when the test failed half-way (stdout and stderr both to `output`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "segd", "up"],
        cwd=cwd,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def end_up(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Ctrl-C for a `segd up` still running, then SIGKILL to whatever of its process group is
    left (its redis-server, watcher, workers), so no test leaves processes behind."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@contextlib.contextmanager
def partial_results(outbox: Path, every_s: float = 0.002) -> Iterator[list[str]]:
    """For the block, a thread looks at `outbox` every `every_s` as a reader would: the list it
    yields gets the name of every visible folder seen without its manifest.json (half a result;
    it stays empty while publication is atomic)."""
    seen: list[str] = []
    stop = threading.Event()

    def look() -> None:
        while not stop.is_set():
            for entry in outbox.iterdir():
                if not entry.name.startswith(".") and not (entry / "manifest.json").exists():
                    if entry.exists():
                        seen.append(entry.name)
            time.sleep(every_s)

    monitor = threading.Thread(target=look)
    monitor.start()
    try:
        yield seen
    finally:
        stop.set()
        monitor.join()
