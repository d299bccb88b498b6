"""segd.systemd: the rendered units pass `systemd-analyze verify` silently, score at or
below a hardening threshold in `systemd-analyze security --offline=yes`, and start the worker the
way a stop lets its job finish."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from redis import Redis
from redis.exceptions import AuthenticationError, ResponseError

from common.config import load_config
from common.errors import ConfigError
from segd import systemd as units
from tests.conftest import ROOT, TINY
from tests.service_helpers import Service

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
SEGD = Path(sys.executable).with_name("segd")  # verify wants ExecStart binaries that exist
# Exposure scores (0 safe .. 10 exposed) of the system units; the measured values are below them.
SECURITY_THRESHOLD = {
    "segd-watcher.service": 2.0,
    "segd-metrics.service": 2.0,
    "segd-web.service": 2.0,
    "segd-redis.service": 1.0,
    "segd-worker@0.service": 2.5,  # keeps the NVIDIA devices and /proc/driver visible
    "segd-trainer.service": 2.5,
}


def _site(root: Path, **sections) -> Path:
    """A config file with absolute data folders (and extra sections) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    data = {
        "paths": {name: str(root / name) for name in ("inbox", "outbox", "state", "models")},
        **sections,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _render(tmp_path: Path, config_file: Path, **kwargs) -> units.Plan:
    config = load_config(config_file, environ={})
    plan = units.plan(
        config,
        config_file,
        prefix=tmp_path / "units",
        etc_dir=tmp_path / "etc",
        gpus=["0", "1"],
        segd=SEGD,
        **kwargs,
    )
    units.write(plan)
    return plan


def _unit_names(plan: units.Plan) -> list[str]:
    """The units to analyze: the worker template as its instance 0."""
    return [n.replace("@.", "@0.") for n in plan.units]


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@needs_analyze
def test_every_system_unit_verifies_silently_and_scores_below_the_threshold(tmp_path):
    """`systemd-analyze verify` prints nothing for each unit, and `security --offline=yes` scores
    each service at or below its threshold."""
    plan = _render(tmp_path, _site(tmp_path / "site"))
    assert sorted(plan.units) == sorted(
        [
            "segd-watcher.service",
            "segd-worker@.service",
            "segd-trainer.service",
            "segd-metrics.service",
            "segd-web.service",
            "segd-redis.service",
            "segd.target",
        ]
    )
    for name in _unit_names(plan):
        done = subprocess.run(
            [ANALYZE, "verify", name], cwd=plan.unit_dir, capture_output=True, text=True
        )
        assert (done.returncode, done.stdout + done.stderr) == (0, ""), name
    scores = {}
    for name in SECURITY_THRESHOLD:
        done = subprocess.run(
            [ANALYZE, "security", "--offline=yes", f"./{name}"],
            cwd=plan.unit_dir,
            capture_output=True,
            text=True,
        )
        match = re.search(rf"Overall exposure level for {re.escape(name)}: ([0-9.]+)", done.stdout)
        assert match, done.stdout + done.stderr
        scores[name] = float(match.group(1))
    assert all(scores[n] <= limit for n, limit in SECURITY_THRESHOLD.items()), scores


def test_units_carry_the_installation_paths_and_the_stop_rules(tmp_path):
    """The worker template: GPU from the instance, this segd and config, KillMode=mixed with a stop
    timeout above the job timeout, Restart=always except on config/model errors, OOMPolicy,
    memory cap, only the data folders writable, GPU devices allowed. The target wants one
    worker per --gpus entry; the watcher is Type=notify with a watchdog."""
    config_file = _site(
        tmp_path / "site", worker={"job_timeout_s": 1200}, video={"job_timeout_s": 600}
    )
    plan = _render(tmp_path, config_file, memory_max="12G")
    worker = _directives((plan.unit_dir / "segd-worker@.service").read_text())
    site = tmp_path / "site"
    assert worker["ExecStart"] == [f"{SEGD} worker --config {config_file}"]
    assert "CUDA_VISIBLE_DEVICES=%i" in worker["Environment"]
    assert worker["KillMode"] == ["mixed"] and worker["TimeoutStopSec"] == ["1260"]
    assert worker["Restart"] == ["always"] and worker["RestartPreventExitStatus"] == ["2 3"]
    assert worker["OOMPolicy"] == ["continue"] and worker["MemoryMax"] == ["12G"]
    assert worker["User"] == ["segd"] and worker["ProtectSystem"] == ["strict"]
    writable = worker["ReadWritePaths"][0].split()
    assert {str(site / n) for n in ("inbox", "outbox", "state", "models")} <= set(writable)
    assert all(Path(p).is_relative_to(site) for p in writable)  # the config's folders only
    assert "PrivateDevices" not in worker and "char-nvidia-frontend rw" in worker["DeviceAllow"]
    assert worker["EnvironmentFile"] == [f"-{tmp_path / 'etc' / 'segd.env'}"]

    trainer = _directives((plan.unit_dir / "segd-trainer.service").read_text())
    assert trainer["ExecStart"] == [f"{SEGD} trainer --config {config_file}"]
    assert "CUDA_VISIBLE_DEVICES=0" in trainer["Environment"] and trainer["KillMode"] == ["mixed"]

    watcher = _directives((plan.unit_dir / "segd-watcher.service").read_text())
    assert watcher["Type"] == ["notify"] and watcher["WatchdogSec"] == ["60"]
    target = (plan.unit_dir / "segd.target").read_text()
    assert "Wants=segd-worker@0.service segd-worker@1.service" in target
    assert "WantedBy=multi-user.target" in target
    assert all("@" not in line or "segd-worker@" in line for line in target.splitlines())
    for text in plan.files.values():
        assert not re.search(r"@[A-Za-z_]+@", text.replace("segd-worker@", ""))


def test_the_worker_stop_timeout_covers_the_longest_job_it_serves(tmp_path):
    """A worker serves image and video jobs: its TimeoutStopSec is the larger of
    worker.job_timeout_s and video.job_timeout_s (4 h by default) + 60 s, so a stop during a long
    video lets it finish; the trainer's is training.job_timeout_s + 60 s."""
    plan = _render(tmp_path, _site(tmp_path / "site", worker={"job_timeout_s": 1200}))
    worker = _directives((plan.unit_dir / "segd-worker@.service").read_text())
    assert worker["TimeoutStopSec"] == [str(4 * 3600 + 60)]
    config_file = _site(
        tmp_path / "other",
        worker={"job_timeout_s": 1200},
        video={"job_timeout_s": 7200},
        training={"job_timeout_s": 600},
    )
    plan = _render(tmp_path / "o", config_file)
    worker = _directives((plan.unit_dir / "segd-worker@.service").read_text())
    trainer = _directives((plan.unit_dir / "segd-trainer.service").read_text())
    assert worker["TimeoutStopSec"] == ["7260"] and trainer["TimeoutStopSec"] == ["660"]


def test_the_private_redis_config_needs_the_password_the_env_file_has(tmp_path, monkeypatch):
    """The rendered redis.conf starts a real redis-server on a unix socket with append-only
    persistence; the URL in segd.env (mode 600) gets in, no password does not; reinstalling
    keeps the password."""
    runtime = Path(tempfile.mkdtemp(prefix="sdrt"))  # short: unix socket paths are limited
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    config_file = _site(tmp_path / "site")
    plan = _render(tmp_path, config_file, user_mode=True)
    env_file = tmp_path / "etc" / "segd.env"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    url = re.search(r"^SEGD_REDIS__URL=(.+)$", env_file.read_text(), re.M).group(1)
    conf = (tmp_path / "etc" / "redis.conf").read_text()
    assert "port 0" in conf and "appendonly yes" in conf and "user default off" in conf

    from segd.up import redis_binary

    (runtime / "segd").mkdir()  # what RuntimeDirectory=segd does
    server = subprocess.Popen([redis_binary(), str(tmp_path / "etc" / "redis.conf")])
    try:
        socket_path = runtime / "segd" / "redis.sock"
        client = Redis.from_url(url)
        deadline = time.monotonic() + 30
        while not socket_path.exists() and time.monotonic() < deadline:
            assert server.poll() is None, "redis-server exited"
            time.sleep(0.05)
        assert client.ping() is True
        client.set("k", "v")
        with pytest.raises((AuthenticationError, ResponseError)):
            Redis(unix_socket_path=str(socket_path)).get("k")
        assert any(
            p.name.startswith("appendonly") for p in (tmp_path / "site/state/redis").iterdir()
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(runtime, ignore_errors=True)
    again = _render(tmp_path, config_file, user_mode=True)
    assert again.files[env_file] == plan.files[env_file]


def test_the_segd_redis_user_runs_rq_jobs_but_no_dangerous_command(tmp_path, monkeypatch):
    """Through the rendered redis.conf's ACL user: an RQ job runs to the end with no permission
    warning and `segd status` reads the queues, while CONFIG SET dir, DEBUG, FLUSHALL, MODULE,
    SHUTDOWN and ACL are refused; install leaves state/redis 0700."""
    import warnings

    from redis.exceptions import NoPermissionError
    from rq import Queue, SimpleWorker
    from rq.serializers import JSONSerializer

    from segd.status import collect
    from segd.up import redis_binary

    runtime = Path(tempfile.mkdtemp(prefix="sdacl"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    config_file = _site(tmp_path / "site")
    (tmp_path / "site/state/redis").mkdir(parents=True, mode=0o755)
    (tmp_path / "site/state/redis").chmod(0o755)  # as an older install left it
    _render(tmp_path, config_file, user_mode=True)
    assert oct((tmp_path / "site/state/redis").stat().st_mode & 0o777) == "0o700"
    env_file = (tmp_path / "etc" / "segd.env").read_text()
    url = re.search(r"^SEGD_REDIS__URL=(.+)$", env_file, re.M).group(1)
    (runtime / "segd").mkdir()
    server = subprocess.Popen([redis_binary(), str(tmp_path / "etc" / "redis.conf")])
    try:
        socket_path = runtime / "segd" / "redis.sock"
        deadline = time.monotonic() + 30
        while not socket_path.exists() and time.monotonic() < deadline:
            assert server.poll() is None, "redis-server exited"
            time.sleep(0.05)
        client = Redis.from_url(url)
        queue = Queue("segment", connection=client, serializer=JSONSerializer)
        job = queue.enqueue("os.getcwd")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            SimpleWorker([queue], connection=client, serializer=JSONSerializer).work(burst=True)
        assert [str(w.message) for w in caught if "not supported" in str(w.message)] == []
        assert job.get_status() == "finished" and job.return_value() == str(Path.cwd())
        config = load_config(None, environ={"SEGD_REDIS__URL": url})
        data = collect(config)
        assert data["redis"]["ok"] is True and data["queues"]["segment"]["queued"] == 0

        refused = [
            ("CONFIG", "SET", "dir", str(tmp_path)),
            ("CONFIG", "GET", "dir"),
            ("DEBUG", "SLEEP", "0"),
            ("FLUSHALL",),
            ("MODULE", "LIST"),
            ("ACL", "LIST"),
            ("SHUTDOWN", "NOSAVE"),
        ]
        for command in refused:
            with pytest.raises(NoPermissionError, match="no permissions to run"):
                client.execute_command(*command)
        assert client.ping() is True  # SHUTDOWN was refused too
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(runtime, ignore_errors=True)


@needs_analyze
def test_user_units_drop_what_only_the_system_manager_can_do(tmp_path):
    """--user: no User=, no mount-namespace sandboxing, wanted by default.target, still verified
    silently by the user manager's rules."""
    plan = _render(tmp_path, _site(tmp_path / "site"), user_mode=True)
    for name, path in plan.units.items():
        text = path.read_text()
        for key in ("User=", "Group=", "ProtectSystem=", "ProtectHome=", "ReadWritePaths="):
            assert f"\n{key}" not in text, (name, key)
    assert "WantedBy=default.target" in (plan.unit_dir / "segd.target").read_text()
    runtime = tmp_path / "xdg"
    runtime.mkdir()
    for name in _unit_names(plan):
        done = subprocess.run(
            [ANALYZE, "--user", "verify", name],
            cwd=plan.unit_dir,
            capture_output=True,
            text=True,
            env={"XDG_RUNTIME_DIR": str(runtime), "PATH": "/usr/bin:/bin"},
        )
        assert (done.returncode, done.stdout + done.stderr) == (0, ""), name


def test_the_web_unit_serves_the_page_and_gets_a_password_when_it_listens_on_the_network(
    tmp_path,
):
    """segd-web runs `segd web` with this config, may write the data folders (uploads, thumbnails,
    retry), stops on a config error (exit 2) and is wanted by the target. Loopback: no password
    is made. web.host 0.0.0.0 without web.token: segd.env (mode 600) gets SEGD_WEB__TOKEN, kept
    when installing again, and the note says where it is."""
    config_file = _site(tmp_path / "site")
    plan = _render(tmp_path, config_file)
    web = _directives((plan.unit_dir / "segd-web.service").read_text())
    assert web["ExecStart"] == [f"{SEGD} web --config {config_file}"]
    assert web["RestartPreventExitStatus"] == ["2"] and web["Restart"] == ["always"]
    assert str(tmp_path / "site" / "inbox") in web["ReadWritePaths"][0].split()
    assert "segd-web.service" in (plan.unit_dir / "segd.target").read_text()
    env_file = tmp_path / "etc" / "segd.env"
    assert "SEGD_WEB__TOKEN" not in env_file.read_text()

    config_file = _site(tmp_path / "open", web={"host": "0.0.0.0"})
    plan = _render(tmp_path / "o", config_file)
    env_file = tmp_path / "o" / "etc" / "segd.env"
    token = re.search(r"^SEGD_WEB__TOKEN=([0-9a-f]{48})$", env_file.read_text(), re.M).group(1)
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert any(
        f"its password (web.token) is SEGD_WEB__TOKEN in {env_file}" in n for n in plan.notes
    )
    load_config(config_file, environ={"SEGD_WEB__TOKEN": token})  # what the unit will see
    again = _render(tmp_path / "o", config_file)
    assert again.files[env_file] == plan.files[env_file]
    with_redis = _render(
        tmp_path / "r",
        _site(tmp_path / "r-site", web={"host": "0.0.0.0"}, redis={"url": "redis://h:6379/0"}),
    )
    (written,) = [text for path, text in with_redis.files.items() if path.name == "segd.env"]
    assert "SEGD_WEB__TOKEN=" in written and "SEGD_REDIS__URL" not in written


def test_with_a_configured_redis_no_private_redis_is_installed(tmp_path):
    """redis.url set (one Redis for many hosts): no segd-redis unit, no redis.conf, no env file
    with a password, and no unit waits for segd-redis."""
    plan = _render(
        tmp_path, _site(tmp_path / "site", redis={"url": "rediss://:pw@redis.lab:6380/0"})
    )
    assert "segd-redis.service" not in plan.units
    assert not (tmp_path / "etc").exists()
    assert not any("segd-redis" in text for text in plan.files.values())


def test_gpu_lists_and_missing_config_files_are_errors_that_say_what_to_do(tmp_path):
    """--gpus takes indices or cpu; install refuses to run without a config file."""
    assert units.parse_gpus("0,1,3") == ["0", "1", "3"] and units.parse_gpus("cpu") == ["cpu"]
    with pytest.raises(ConfigError, match=r"--gpus '0;1': expected GPU indices"):
        units.parse_gpus("0;1")
    with pytest.raises(ConfigError, match="a GPU is named twice"):
        units.parse_gpus("1,1")
    with pytest.raises(ConfigError, match=r"needs a config file \(--config FILE\)"):
        units.config_file_for(tmp_path / "nope.yaml")


def test_segd_systemd_install_writes_the_units_and_prints_the_systemctl_lines(tmp_path):
    """The command writes every unit and ends with the systemctl lines to run."""
    config_file = _site(tmp_path / "site")
    done = subprocess.run(
        [sys.executable, "-m", "segd", "systemd", "install", "--config", str(config_file)]
        + ["--prefix", str(tmp_path / "u"), "--etc", str(tmp_path / "e"), "--gpus", "0,1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'u' / 'segd-worker@.service'}" in done.stdout
    assert "  systemctl daemon-reload\n  systemctl enable --now segd.target" in done.stdout
    assert "useradd --system" in done.stdout


# --- starting the worker the way its unit does --------------------------------------------------
def _exec_start(unit: Path, instance: str, cache: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and Environment= of a rendered unit instance, specifiers expanded."""
    directives = _directives(unit.read_text())

    def expand(value: str) -> str:
        return value.replace("%i", instance).replace("%C", str(cache))

    (command,) = directives["ExecStart"]
    env = dict(shlex.split(expand(v))[0].split("=", 1) for v in directives["Environment"])
    for env_file in directives.get("EnvironmentFile", []):
        path = Path(env_file.lstrip("-"))
        if path.exists():
            env.update(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return shlex.split(expand(command)), env


def test_one_sigterm_during_a_job_lets_it_finish_and_the_worker_exit_0(tmp_path, tiny_checkpoint):
    """The worker started with its unit's exact command line and environment: one SIGTERM (what
    KillMode=mixed sends it) during a job lets the job finish and publish, then it exits 0."""
    service = Service(tmp_path / "site", checkpoint=tiny_checkpoint)
    service.start_redis()
    try:
        overrides = {
            **TINY,
            "SEGD_SAMPLING__MODE": "random",
            "SEGD_SAMPLING__POINTS": "400",  # a job of a few seconds
            "SEGD_MODEL__DECODER_BATCH": "2",
        }
        service.env.update(overrides)
        site_config: dict[str, dict] = {}
        for name, value in service.env.items():
            if name.startswith("SEGD_"):
                section, key = name[5:].lower().split("__")
                site_config.setdefault(section, {})[key] = yaml.safe_load(value)
        config_file = tmp_path / "site" / "config.yaml"
        config_file.write_text(yaml.safe_dump(site_config))
        plan = _render(tmp_path, config_file)
        argv, unit_env = _exec_start(
            plan.unit_dir / "segd-worker@.service", "cpu", tmp_path / "cache"
        )
        assert argv[1:] == ["worker", "--config", str(config_file)]
        assert unit_env["CUDA_VISIBLE_DEVICES"] == "cpu"
        # Only what systemd would give it, plus PYTHONPATH so this checkout's code is what runs.
        env = {"PATH": "/usr/bin:/bin", **unit_env, "PYTHONPATH": str(ROOT)}
        log = open(tmp_path / "unit-worker.log", "wb")
        worker = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        service.procs["worker"] = worker
        service.start("watch")
        (service.inbox / "big.jpg").write_bytes(_jpeg())
        service.wait_for(
            lambda: service.redis_client().zcard("rq:wip:segment") > 0, what="the job to start"
        )
        running_at_signal = not service.folders("done")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=300) == 0, (tmp_path / "unit-worker.log").read_text()
        service.procs.pop("worker")
        assert list(service.results()) == ["big"]
        assert len(service.folders("done")) == 1 and service.folders("claimed") == []
        assert running_at_signal
    finally:
        service.close()


def _jpeg() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(7).uniform(0, 1, (600, 800, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
