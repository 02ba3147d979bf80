"""compose.yaml cannot run here (no Docker engine), so check what it would run.

Two ways the documented deployment failed to start, each checked the way the
engine would meet it: every service's command runs its start-up checks against
exactly the environment compose and the image give it (after compose's
``${VAR...}`` interpolation, with ``.env.example`` as the operator's ``.env``),
and the image's runtime user can write every volume and cache path.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import pytest
import yaml

from pgclip.cli import build_parser
from pgclip.cli.serve import listen_address
from pgclip.core.errors import InvalidInput
from pgclip.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_KEY = "compose-test-key-0123456789"  # what an operator puts in .env; never a real key
# Where the caches of the libraries the image runs go (huggingface_hub, torch, platformdirs).
CACHE_VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TORCH_HOME", "XDG_CACHE_HOME")
# Home directories of users a base image already has; none of them is writable by its user.
BUILTIN_HOMES = {"root": "/root", "0": "/root", "nobody": "/nonexistent", "65534": "/nonexistent"}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _pgclip_commands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


# --- compose's interpolation -----------------------------------------------------------------


class InterpolationError(Exception):
    """What ``docker compose`` stops with: a required variable (``${VAR:?message}``) is missing."""


_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?", re.S)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's rules: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}`` / ``-`` (unset or empty /
    unset), ``${VAR:?message}`` / ``?`` (required), ``${VAR:+alt}`` / ``+``."""

    def one(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        if match["bare"]:
            return env.get(match["bare"], "")
        parts = _BRACED.fullmatch(match["braced"])
        if parts is None:
            raise InterpolationError(f"invalid interpolation format: ${{{match['braced']}}}")
        name, op, arg = parts["name"], parts["op"], parts["arg"]
        value = env.get(name)
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if missing else value
        if op in (":?", "?"):
            if missing:
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return value
        if op in (":+", "+"):
            return "" if missing else arg
        return value or ""

    return _VARIABLE.sub(one, text)


def _resolve(node, env: Mapping[str, str]):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _resolve(value, env) for key, value in node.items()}
    return node


def read_env_file(path: Path) -> dict[str, str]:
    """A ``.env`` file as compose reads it: KEY=VALUE lines, ``#`` comments, optional quotes."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def resolved_compose(env: Mapping[str, str]) -> dict:
    """compose.yaml as ``docker compose config`` would show it with ``env`` as shell + .env."""
    return _resolve(_compose(), env)


def operator_env(**extra: str) -> dict[str, str]:
    """An operator's ``.env``: .env.example as shipped, plus what they filled in."""
    return {**read_env_file(ROOT / ".env.example"), **extra}


def service_environment(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):  # the `- KEY=VALUE` form
        environment = dict(item.partition("=")[::2] for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def _uses_our_image(service: dict) -> bool:
    return "build" in service or str(service.get("image", "")).startswith("pgclip")


# --- the Dockerfile, as far as the runtime user's files go ------------------------------------


class Image:
    """What a Dockerfile leaves for the processes: environment, user, volumes, and who owns which
    directory (from ``useradd``, ``mkdir``, ``chown``, ``install -d`` in RUN). Changes made under
    a path after it is declared a VOLUME are dropped, as Docker drops them."""

    def __init__(self, text: str) -> None:
        self.env: dict[str, str] = {}
        self.user = "root"
        self.volumes: list[str] = []
        self.homes: dict[str, str] = dict(BUILTIN_HOMES)
        self.uids: dict[str, str] = {"root": "0", "nobody": "65534"}
        self.owners: dict[str, str] = {"/": "root", "/tmp": "*"}  # path -> owning user ("*": anyone)
        for instruction, argument in _instructions(text):
            if instruction == "ENV":
                self.env.update(_env_pairs(argument))
            elif instruction == "USER":
                self.user = argument.split(":")[0].strip()
            elif instruction == "VOLUME":
                words = json.loads(argument) if argument.startswith("[") else argument.split()
                self.volumes += [_norm(w) for w in words]
            elif instruction == "RUN":
                for command in _commands(argument):
                    self._run(command)

    def _run(self, command: list[str]) -> None:
        name, args = command[0], command[1:]
        if name in ("useradd", "adduser"):
            opts, positional = _options(args, with_value={"-d", "--home-dir", "--home", "-u", "--uid", "-g", "--gid",
                                                          "-s", "--shell", "-G", "--groups", "-c", "--comment"})
            user = positional[-1]
            home = opts.get("-d") or opts.get("--home-dir") or opts.get("--home") or f"/home/{user}"
            self.homes[user] = home
            if uid := opts.get("-u") or opts.get("--uid"):
                self.uids[user] = uid
            if {"-m", "--create-home"} & set(opts) or name == "adduser":
                self._own(home, user)
        elif name == "mkdir":
            for path in _options(args, with_value={"-m", "--mode"})[1]:
                if self._owner_of(path)[0] != path:
                    self._own(path, self.user)
        elif name == "chown":
            _, positional = _options(args, with_value=set())
            owner = positional[0].split(":")[0]
            for path in positional[1:]:
                self._own(path, owner)
        elif name == "install":
            opts, positional = _options(args, with_value={"-o", "--owner", "-g", "--group", "-m", "--mode"})
            if "-d" in opts or "--directory" in opts:
                for path in positional:
                    self._own(path, opts.get("-o") or opts.get("--owner") or self.user)

    def _own(self, path: str, user: str) -> None:
        path = _norm(path)
        if any(_under(path, volume) for volume in self.volumes):
            return  # Docker discards changes to a volume's contents made after its VOLUME line
        self.owners[path] = user

    def _owner_of(self, path: str) -> tuple[str, str]:
        """(the nearest directory at or above ``path`` the image knows, its owner)."""
        known = max((p for p in self.owners if _under(_norm(path), p)), key=len)
        return known, self.owners[known]

    def writable(self, path: str) -> bool:
        """Can the runtime user create files at ``path`` (it or the nearest directory above it is theirs)?"""
        _, owner = self._owner_of(path)
        return owner == "*" or owner in (self.user, self.uids.get(self.user))

    def home(self) -> str:
        return self.env.get("HOME") or self.homes.get(self.user, f"/home/{self.user}")


def _instructions(text: str) -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.strip().startswith("#"):
            continue  # a comment line, also inside a continued instruction
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            lines.append(current.strip())
        current = ""
    out = []
    for line in lines:
        instruction, _, argument = line.partition(" ")
        out.append((instruction.upper(), argument.strip()))
    return out


def _env_pairs(argument: str) -> dict[str, str]:
    words = shlex.split(argument)
    if words and "=" not in words[0]:  # the old `ENV KEY value with spaces` form
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def _commands(script: str) -> list[list[str]]:
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in (";", "&&", "||", "|", "&"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def _options(args: list[str], *, with_value: set[str]) -> tuple[dict[str, str], list[str]]:
    opts, positional, i = {}, [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and len(arg) > 1:
            key, eq, value = arg.partition("=")
            if eq:
                opts[key] = value
            elif arg in with_value:
                opts[arg] = args[i + 1]
                i += 1
            elif not arg.startswith("--") and len(arg) > 2 and all(f"-{c}" not in with_value for c in arg[1:]):
                opts.update({f"-{c}": "" for c in arg[1:]})  # bundled flags: -pv
            else:
                opts[arg] = ""
        else:
            positional.append(arg)
        i += 1
    return opts, positional


def _norm(path: str) -> str:
    return str(PurePosixPath("/" + path.strip().strip("/")))


def _under(path: str, parent: str) -> bool:
    return path == parent or parent == "/" or path.startswith(parent.rstrip("/") + "/")


def _image() -> Image:
    return Image((ROOT / "Dockerfile").read_text())


def _mount_targets(service: dict) -> list[str]:
    targets = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            targets.append(volume["target"])
        else:
            parts = volume.split(":")
            targets.append(parts[1] if len(parts) > 1 else parts[0])
    return [_norm(t) for t in targets]


# --- the tests ------------------------------------------------------------------------------


def test_every_service_runs_a_real_pgclip_or_alembic_command():
    services = _compose()["services"]
    assert {"db", "migrate", "api", "worker"} <= set(services)
    known = _pgclip_commands()
    for name, service in services.items():
        command = service.get("command")
        if name in ("db", "replica"):  # PostgreSQL itself (the replica: test_the_replica_profile...)
            assert service["image"].startswith("pgvector/pgvector")
            continue
        assert command, name
        if command[0] == "alembic":
            assert command[1:] == ["upgrade", "head"]
            assert (ROOT / "alembic.ini").exists()
        else:
            assert command[0] == "pgclip" and command[1] in known, f"{name}: {command}"
            build_parser().parse_args(command[1:])  # its options parse too


def test_services_start_in_order_and_share_one_database_url():
    services = resolved_compose(operator_env(PGCLIP_API_KEYS=SAMPLE_KEY))["services"]
    assert "healthcheck" in services["db"]
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    urls = set()
    for name in ("migrate", "api", "worker"):
        if name != "migrate":
            assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        url = service_environment(services[name])["PGCLIP_DATABASE_URL"]
        assert url.startswith("postgresql://") and "@db:5432/" in url, url
        urls.add(url)
    assert len(urls) == 1, urls
    db_env = service_environment(services["db"])
    user, password, database = db_env["POSTGRES_USER"], db_env["POSTGRES_PASSWORD"], db_env["POSTGRES_DB"]
    assert f"postgresql://{user}:{password}@db:5432/{database}" in urls
    assert "ports" not in services["worker"]  # workers scale with --scale worker=N


def test_the_dockerfile_installs_what_the_services_run():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for folder in ("pgclip", "api", "db", "workers", "migrations"):
        assert f"COPY {folder} " in dockerfile
    assert "alembic.ini" in dockerfile


def test_compose_refuses_to_start_without_api_keys():
    """`${PGCLIP_API_KEYS:?...}`: with nothing set, or .env.example copied unfilled, `docker compose up`
    stops before starting anything and names the variable."""
    for env in ({}, operator_env()):
        with pytest.raises(InterpolationError, match="PGCLIP_API_KEYS"):
            resolved_compose(env)


@pytest.mark.parametrize("name", ["migrate", "api", "worker", "api-replica"])
def test_each_command_passes_its_start_up_checks_in_the_environment_compose_gives_it(name):
    """The container's environment is the image's ENV overlaid with the service's `environment`
    (interpolated with the operator's .env); settings are read from exactly that, and `serve`
    runs the same check it runs before listening (0.0.0.0 needs PGCLIP_API_KEYS)."""
    service = resolved_compose(operator_env(PGCLIP_API_KEYS=SAMPLE_KEY))["services"][name]
    environment = {**_image().env, **service_environment(service)}
    settings = Settings.from_env(environment)
    assert settings.database_url, f"{name} has no PGCLIP_DATABASE_URL: it would start an embedded server"
    command = service["command"]
    if command[0] != "pgclip":
        return
    args = build_parser().parse_args(command[1:])
    if args.command == "serve":
        host, port = listen_address(args, settings)
        assert (host, port) == ("0.0.0.0", 8000)
        assert settings.write_keys == (SAMPLE_KEY,)
        published = {str(p).split(":")[-1] for p in service.get("ports", [])}
        assert str(port) in published, service.get("ports")


def test_serve_check_refuses_what_the_original_compose_gave_the_api():
    """The check the compose test relies on: 0.0.0.0 without keys is refused, loopback is not."""
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0"])
    with pytest.raises(InvalidInput, match="PGCLIP_API_KEYS"):
        listen_address(args, Settings.from_env({"PGCLIP_DATABASE_URL": "postgresql://db/pgclip"}))
    assert listen_address(build_parser().parse_args(["serve"]), Settings.from_env({}))[0] == "127.0.0.1"


def test_the_runtime_user_can_write_every_volume_and_cache():
    image = _image()
    assert image.user not in ("root", "0"), "the image should not run as root"
    services = resolved_compose(operator_env(PGCLIP_API_KEYS=SAMPLE_KEY))["services"]
    paths: list[tuple[str, str]] = []  # (path, why it must be writable)
    for name, service in services.items():
        if not _uses_our_image(service):
            continue
        paths += [(target, f"{name}'s volume") for target in _mount_targets(service)]
        environment = {**image.env, **service_environment(service)}
        paths += [(environment[v], v) for v in CACHE_VARIABLES if environment.get(v)]
    # open_clip downloads URL weights to ~/.cache/clip whatever the variables say.
    paths.append((f"{image.home()}/.cache", "HOME"))
    assert any(why.endswith("volume") for _, why in paths), "no service mounts a volume for the model cache"
    for path, why in paths:
        assert image.writable(path), (
            f"{why}: {path} is not writable by the image's user {image.user!r} "
            f"(nearest known directory {image._owner_of(path)[0]!r}, owned by {image._owner_of(path)[1]!r}); "
            "create it and chown it to that user in the Dockerfile, before any VOLUME line above it"
        )


def test_the_image_model_understands_docker_rules():
    """The Dockerfile model itself: ownership set after VOLUME does not count; nobody has no home."""
    late = Image("FROM x\nVOLUME /cache\nRUN mkdir -p /cache && chown app /cache\nRUN useradd -m app\nUSER app\n")
    assert not late.writable("/cache/huggingface")
    assert late.writable("/home/app/.cache")
    early = Image("FROM x\nRUN useradd --create-home app \\\n  && mkdir -p /cache && chown -R app:app /cache\n"
                  "VOLUME /cache\nUSER app\n")
    assert early.writable("/cache/huggingface")
    nobody = Image("FROM x\nENV HF_HOME=/cache/hf\nVOLUME /cache\nUSER nobody\n")
    assert not nobody.writable(nobody.env["HF_HOME"]) and not nobody.writable(f"{nobody.home()}/.cache")


def test_long_running_services_are_restarted_when_they_exit():
    """A worker's watchdog exits it (status 3) for its orchestrator to restart."""
    services = _compose()["services"]
    for name in ("api", "worker"):
        assert services[name].get("restart") in ("unless-stopped", "always", "on-failure"), name


def test_the_replica_profile_streams_from_db_and_an_api_reads_from_it():
    """`docker compose --profile replica up`: a hot standby made from db by pg_basebackup -R, and an
    API whose reads go to it; plain `docker compose up` starts neither and needs neither."""
    compose = resolved_compose(operator_env(PGCLIP_API_KEYS=SAMPLE_KEY))
    services = compose["services"]
    profiled = {name for name, service in services.items() if service.get("profiles")}
    assert profiled == {"replica", "api-replica"}
    assert all(services[name]["profiles"] == ["replica"] for name in profiled)
    for name, service in services.items():  # a service without the profile must not wait for one with it
        if name not in profiled:
            assert not set(service.get("depends_on") or {}) & profiled, name
    db, replica, api = services["db"], services["replica"], services["api-replica"]
    db_env = service_environment(db)
    # db lets other containers replicate: its hba file (from configs) has a remote replication rule.
    hba_path = db["command"][db["command"].index("-c") + 1].removeprefix("hba_file=")
    (mount,) = [c for c in db["configs"] if c["target"] == hba_path]
    rules = [line.split() for line in compose["configs"][mount["source"]]["content"].splitlines()]
    assert ["host", "replication", "all", "all", "scram-sha-256"] in rules
    assert ["host", "all", "all", "all", "scram-sha-256"] in rules  # clients still need the password
    # The replica: pg_basebackup -R from db with db's superuser and password, on first start only.
    assert replica["image"] == db["image"] and replica["depends_on"]["db"]["condition"] == "service_healthy"
    script = replica["command"][0]
    backup = next(shlex.split(line) for line in script.splitlines() if "pg_basebackup" in line)
    assert {"--host=db", f"--username={db_env['POSTGRES_USER']}", "--write-recovery-conf"} <= set(backup)
    assert service_environment(replica)["PGPASSWORD"] == db_env["POSTGRES_PASSWORD"]
    assert 'if [ ! -s "$PGDATA/PG_VERSION" ]' in script and "exec postgres" in script
    assert _mount_targets(replica) == [service_environment(replica)["PGDATA"]]
    assert "healthcheck" in replica
    # The API of the profile reads from it: the settings it would start with.
    settings = Settings.from_env({**_image().env, **service_environment(api)})
    user, password, database = db_env["POSTGRES_USER"], db_env["POSTGRES_PASSWORD"], db_env["POSTGRES_DB"]
    assert settings.read_database_urls == (f"postgresql://{user}:{password}@replica:5432/{database}",)
    assert settings.database_url == service_environment(services["api"])["PGCLIP_DATABASE_URL"]
    assert api["depends_on"]["replica"]["condition"] == "service_healthy"
    published = {str(p).split(":")[0] for p in api["ports"]} & {str(p).split(":")[0] for p in services["api"]["ports"]}
    assert not published, "both APIs would publish the same host port"
