"""`segd systemd install`: render the unit templates in `systemd/` with this installation's paths.

Templates use `@NAME@` placeholders, and lines starting with a tag keep only where it applies:
`@system@ ...` only in system units (dropped with --user: `User=` and the namespace-based
sandboxing need the system manager), `@redis@ ...` only when segd runs its private Redis
(`redis.url` unset). Every placeholder must be filled: a template naming an unknown one is an
error, never a unit with `@X@` in it.

What gets written (system / --user):
    units      /etc/systemd/system/       ~/.config/systemd/user/     (or --prefix DIR)
    secrets    /etc/segd/segd.env         ~/.config/segd/segd.env     (or --etc DIR), mode 600:
               SEGD_REDIS__URL with the private Redis's password, and SEGD_WEB__TOKEN (the web
               page's password) when web.host is not loopback and the config sets no token;
               read by systemd for every unit
               /etc/segd/redis.conf       (the private Redis's configuration, mode 640)
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from common import queues
from common.config import Config
from common.errors import ConfigError, SegdError
from segd.web.security import is_loopback

TEMPLATES = Path(__file__).resolve().parents[1] / "systemd"
PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
TAG = re.compile(r"^@([a-z]+)@ ")
SERVICES = (
    "segd-watcher.service",
    "segd-worker@.service",
    "segd-trainer.service",
    "segd-metrics.service",
    "segd-web.service",
)
REDIS_UNIT = "segd-redis.service"
TARGET = "segd.target"
DEFAULT_USER = "segd"
HOME_ROOTS = ("/home", "/root", "/run/user")


@dataclass
class Plan:
    """Everything `segd systemd install` writes, and the commands for the operator."""

    unit_dir: Path
    etc_dir: Path
    files: dict[Path, str] = field(default_factory=dict)
    modes: dict[Path, int] = field(default_factory=dict)
    folders: list[Path] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def units(self) -> dict[str, Path]:
        """Unit name → path, for the rendered units."""
        return {p.name: p for p in self.files if p.parent == self.unit_dir}


def parse_gpus(text: str | None) -> list[str]:
    """`--gpus 0,1` → ["0", "1"]; `cpu` → ["cpu"]; None → the NVIDIA GPUs of this host, else cpu."""
    if text is None:
        try:
            count = len(os.listdir("/proc/driver/nvidia/gpus"))
        except OSError:
            count = 0
        return [str(i) for i in range(count)] or ["cpu"]
    if text == "cpu":
        return ["cpu"]
    if not re.fullmatch(r"\d+(,\d+)*", text):
        raise ConfigError(
            f"--gpus {text!r}: expected GPU indices separated by commas (e.g. 0,1) or cpu"
        )
    gpus = text.split(",")
    if len(set(gpus)) != len(gpus):
        raise ConfigError(f"--gpus {text!r}: a GPU is named twice")
    return gpus


def segd_binary() -> Path:
    """The `segd` script of this installation (beside the running Python, else on PATH)."""
    beside = Path(sys.executable).with_name("segd")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("segd")
    if found:
        return Path(found).resolve()
    raise SegdError(
        f"cannot find the segd script beside {sys.executable} or on PATH: install segd (make install)"
    )


def _data_paths(config: Config) -> list[Path]:
    """Every folder in the configuration (paths.*, and path-valued keys of other sections such
    as training datasets): what the services may write."""
    found: list[Path] = []

    def walk(value):
        if isinstance(value, Path):
            found.append(value.resolve())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))

    walk(config)
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    for path in unique:
        if re.search(r"\s", str(path)):
            raise ConfigError(f"{path}: folders for systemd units may not contain whitespace")
    return unique


def fill(template: str, values: dict[str, str], tags: set[str], source: str = "template") -> str:
    """Keep the lines whose tag is active (untagged lines always), then fill the placeholders."""
    lines = []
    for line in template.splitlines():
        match = TAG.match(line)
        if match:
            if match.group(1) not in tags:
                continue
            line = line[match.end() :]
        lines.append(line)
    text = "\n".join(lines) + "\n"
    unknown = sorted(set(PLACEHOLDER.findall(text)) - set(values))
    if unknown:
        raise SegdError(f"{source}: unknown placeholders {', '.join(unknown)}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _existing_web_token(env_file: Path) -> str | None:
    """The web page's token from an earlier install (so re-installing keeps it)."""
    try:
        text = env_file.read_text()
    except OSError:
        return None
    match = re.search(r"^SEGD_WEB__TOKEN=([0-9a-f]{48})$", text, re.M)
    return match.group(1) if match else None


def _existing_password(env_file: Path) -> str | None:
    """The private Redis password from an earlier install (so re-installing keeps it)."""
    try:
        text = env_file.read_text()
    except OSError:
        return None
    match = re.search(r"^SEGD_REDIS__URL=unix://segd:([0-9a-f]{64})@", text, re.M)
    return match.group(1) if match else None


def plan(
    config: Config,
    config_file: Path,
    *,
    user_mode: bool = False,
    prefix: Path | None = None,
    etc_dir: Path | None = None,
    gpus: list[str] | None = None,
    service_user: str = DEFAULT_USER,
    memory_max: str = "25%",
    trainer_memory_max: str = "50%",
    segd: Path | None = None,
) -> Plan:
    """Render every unit (and, with the private Redis, its configuration and the secrets file)."""
    from segd.up import redis_binary

    home = Path.home()
    unit_dir = prefix or (
        home / ".config" / "systemd" / "user" if user_mode else Path("/etc/systemd/system")
    )
    etc_dir = etc_dir or (home / ".config" / "segd" if user_mode else Path("/etc/segd"))
    gpus = gpus or parse_gpus(None)
    segd = segd or segd_binary()
    config_file = config_file.resolve()
    data = _data_paths(config)
    runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}")
    socket_path = (runtime if user_mode else Path("/run")) / "segd" / "redis.sock"
    private_redis = config.redis.url is None
    redis_dir = Path(config.paths.state).resolve() / "redis"
    env_file = etc_dir / "segd.env"
    under_home = [p for p in [*data, config_file, segd] if str(p).startswith(HOME_ROOTS)]
    values = {
        "SEGD": str(segd),
        "CONFIG": str(config_file),
        "ENV_FILE": str(env_file),
        "USER": service_user,
        "GROUP": service_user,
        "READ_WRITE_PATHS": " ".join(str(p) for p in data),
        "PROTECT_HOME": "read-only" if under_home else "yes",
        "WORKER_STOP_TIMEOUT_S": str(queues.stop_timeout_s(config)),
        "TRAINER_STOP_TIMEOUT_S": str(queues.stop_timeout_s(config, (queues.TRAIN_QUEUE,))),
        "TRAINER_GPU": gpus[0],
        "MEMORY_MAX": memory_max,
        "TRAINER_MEMORY_MAX": trainer_memory_max,
        "WORKER_UNITS": " ".join(f"segd-worker@{gpu}.service" for gpu in gpus),
        "WANTED_BY": "default.target" if user_mode else "multi-user.target",
        "REDIS_SERVER": redis_binary(),
        "REDIS_CONF": str(etc_dir / "redis.conf"),
        "REDIS_DIR": str(redis_dir),
        "REDIS_SOCKET": str(socket_path),
    }
    tags = set() if user_mode else {"system"}
    if private_redis:
        tags.add("redis")
    if not TEMPLATES.is_dir():
        raise SegdError(f"the unit templates are missing: {TEMPLATES} (a segd checkout has them)")

    result = Plan(unit_dir=unit_dir, etc_dir=etc_dir)
    names = [*SERVICES, TARGET] + ([REDIS_UNIT] if private_redis else [])
    for name in names:
        source = TEMPLATES / f"{name}.in"
        result.files[unit_dir / name] = fill(source.read_text(), values, tags, str(source))
        result.modes[unit_dir / name] = 0o644
    secrets_lines: list[str] = []
    if private_redis:
        password = _existing_password(env_file) or secrets.token_hex(32)
        source = TEMPLATES / "redis.conf.in"
        conf = fill(source.read_text(), {**values, "REDIS_PASSWORD": password}, tags, str(source))
        result.files[etc_dir / "redis.conf"] = conf
        result.modes[etc_dir / "redis.conf"] = 0o640
        secrets_lines.append(f"SEGD_REDIS__URL=unix://segd:{password}@{socket_path}")
        result.folders.append(redis_dir)
        result.modes[redis_dir] = 0o700  # the append-only file holds every queued job
    if not is_loopback(config.web.host) and not config.web.token:
        token = _existing_web_token(env_file) or secrets.token_hex(24)
        secrets_lines.append(f"SEGD_WEB__TOKEN={token}")
        result.notes.append(
            f"the web page listens on {config.web.host}:{config.web.port}; its password "
            f"(web.token) is SEGD_WEB__TOKEN in {env_file}"
        )
    if secrets_lines:
        result.files[env_file] = (
            "# Written by `segd systemd install`: read by systemd for every segd unit.\n"
            + "".join(line + "\n" for line in secrets_lines)
        )
        result.modes[env_file] = 0o600
    result.folders[:0] = data

    for path in data:
        if str(path).startswith(("/tmp/", "/var/tmp/")) and not user_mode:
            result.notes.append(
                f"{path} is under /tmp: the units use PrivateTmp=yes, so the services would see "
                "a private /tmp instead; move it"
            )
    if under_home and not user_mode:
        result.notes.append(
            f"{under_home[0]} is under a home folder: ProtectHome=read-only instead of yes"
        )
    systemctl = "systemctl --user" if user_mode else "systemctl"
    if not user_mode:
        result.commands += [
            f"getent passwd {service_user} >/dev/null || useradd --system --user-group "
            f"--home-dir /var/lib/segd --shell /usr/sbin/nologin {service_user}",
            f"chown -R {service_user}:{service_user} " + " ".join(str(p) for p in data),
            f"chgrp {service_user} {etc_dir / 'redis.conf'}" if private_redis else "",
        ]
    result.commands += [
        f"{systemctl} daemon-reload",
        f"{systemctl} enable --now {TARGET}",
        f"{systemctl} status 'segd*'",
    ]
    if user_mode:
        result.commands.append(f"loginctl enable-linger {os.environ.get('USER', '$USER')}")
    result.commands = [c for c in result.commands if c]
    return result


def write(result: Plan) -> None:
    """Create the folders and write the files with their modes (secrets never world-readable)."""
    for folder in result.folders:
        folder.mkdir(parents=True, exist_ok=True)
        if folder in result.modes:
            os.chmod(folder, result.modes[folder])
    for path, text in result.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = result.modes.get(path, 0o644)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)


def config_file_for(path: Path | None) -> Path:
    """The config file the units will name: --config, else $SEGD_CONFIG, else ./config.yaml."""
    path = path or (Path(os.environ["SEGD_CONFIG"]) if os.environ.get("SEGD_CONFIG") else None)
    path = path or (Path("config.yaml") if Path("config.yaml").is_file() else None)
    if path is None or not path.is_file():
        raise ConfigError(
            f"segd systemd install needs a config file (--config FILE){f'; {path} is not one' if path else ''}: "
            "the services read their folders from it, and relative paths resolve against its folder"
        )
    return path.resolve()
