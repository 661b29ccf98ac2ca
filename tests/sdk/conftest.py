"""Fixtures for the SDK end-to-end suite.

A session starts the real `ruleyard serve` binary once per database backend (SQLite always,
PostgreSQL too when RULEYARD_TEST_POSTGRES_URL is set), creates the users the tests act as and
builds small `file://` git repositories for the server's connection tests.
"""

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from ReversingLabs.SDK.a1000 import A1000

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_SECONDS = 60
POSTGRES_URL = os.environ.get("RULEYARD_TEST_POSTGRES_URL")
BACKENDS = ["sqlite"] + (["postgres"] if POSTGRES_URL else [])

# A rule file that every upstream repository carries, so imports have something to import.
FIXTURE_RULE_PATH = "rules/sdk_fixture.yara"
FIXTURE_RULE = 'rule sdk_fixture_rule {\n    strings:\n        $a = "ruleyard-sdk-fixture"\n    condition:\n        $a\n}\n'


def server_binary() -> Path:
    configured = Path(os.environ.get("RULEYARD_BIN", "target/debug/ruleyard"))
    return configured if configured.is_absolute() else REPO_ROOT / configured


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    backend: str
    base_url: str
    env: dict
    log_path: Path
    admin_password: str
    process: subprocess.Popen = field(repr=False)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        """Runs `ruleyard <args>` against the same data directory and database as the server."""
        result = subprocess.run(
            [str(server_binary()), *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (
            f"ruleyard {' '.join(args)} exited with {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
        return result

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def wait_until_healthy(process: subprocess.Popen, base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        try:
            # Doubles as the polling interval and as the check that the server has not died.
            code = process.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"ruleyard serve exited with {code} before answering /healthz; log:\n{log_path.read_text()}")
    pytest.fail(f"ruleyard serve did not answer /healthz within {STARTUP_TIMEOUT_SECONDS}s; log: {log_path}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def psql(url: str, sql: str) -> None:
    subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
                   check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="session")
def postgres_database(request):
    """Creates a fresh PostgreSQL database and yields its URL; drops it afterwards."""
    name = f"ruleyard_sdk_{secrets.token_hex(6)}"
    psql(POSTGRES_URL, f'CREATE DATABASE "{name}"')
    yield urlsplit(POSTGRES_URL)._replace(path=f"/{name}").geturl()
    psql(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=BACKENDS)
def server(request, tmp_path_factory) -> Server:
    binary = server_binary()
    if not binary.is_file():
        pytest.fail(f"server binary {binary} does not exist; build it with `cargo build` or set RULEYARD_BIN")

    workdir = tmp_path_factory.mktemp(f"ruleyard-{request.param}")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RULEYARD_")}
    env.update(
        RULEYARD_LISTEN=f"127.0.0.1:{port}",
        RULEYARD_DATA_DIR=str(workdir / "data"),
        RULEYARD_ADMIN_PASSWORD=secrets.token_urlsafe(16),
        RULEYARD_ALLOW_LOCAL_SOURCES="true",
        # No periodic update run may touch repositories while the tests work on them.
        RULEYARD_UPDATE_INTERVAL_SECONDS="0",
    )
    if request.param == "postgres":
        env["RULEYARD_DATABASE_URL"] = request.getfixturevalue("postgres_database")

    log_path = workdir / "server.log"
    base_url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(binary), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        wait_until_healthy(process, base_url, log_path)
        yield Server(
            backend=request.param,
            base_url=base_url,
            env=env,
            log_path=log_path,
            admin_password=env["RULEYARD_ADMIN_PASSWORD"],
            process=process,
        )
    finally:
        stop(process)


@pytest.fixture(scope="session")
def passwords(server) -> dict[str, str]:
    """Creates the regular users alice and bob; returns every user's password, admin's included."""
    created = {"admin": server.admin_password}
    for name in ("alice", "bob"):
        created[name] = secrets.token_urlsafe(16)
        server.cli("user", "create", name, stdin=created[name] + "\n")
    return created


def sdk_client(server: Server, passwords: dict[str, str], username: str) -> A1000:
    return A1000(host=server.base_url, username=username, password=passwords[username], verify=False)


@pytest.fixture(scope="session")
def admin(server, passwords) -> A1000:
    return sdk_client(server, passwords, "admin")


@pytest.fixture(scope="session")
def alice(server, passwords) -> A1000:
    return sdk_client(server, passwords, "alice")


@pytest.fixture(scope="session")
def bob(server, passwords) -> A1000:
    return sdk_client(server, passwords, "bob")


@pytest.fixture(scope="session")
def alice_http(server, passwords) -> requests.Session:
    """A plain HTTP session authenticated as alice, for Ruleyard's own endpoints the SDK lacks."""
    response = requests.post(f"{server.base_url}/api-token-auth/",
                             data={"username": "alice", "password": passwords["alice"]}, timeout=30)
    assert response.status_code == 200, response.text
    session = requests.Session()
    session.headers["Authorization"] = f"Token {response.json()['token']}"
    yield session
    session.close()


def git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(
        ["git", "-c", "user.name=Ruleyard SDK tests", "-c", "user.email=sdk-tests@example.com", *args],
        cwd=cwd, check=True, capture_output=True, text=True, timeout=60,
        env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"},
    )


class Upstreams:
    """Makes fresh bare git repositories, each at its own `file://` URL.

    Kinds:
      - "main": HEAD is `main`; branches `main` and `feature`.
      - "develop": HEAD is `develop`, the only branch.
      - "unborn-head": HEAD names a branch that does not exist (`trunk`); the only branch is `master`.
    Each kind is built once with git and copied for every request, so URLs never repeat.
    """

    LAYOUTS = {
        "main": ("main", {"main": "main", "feature": "main"}),
        "develop": ("develop", {"develop": "main"}),
        "unborn-head": ("trunk", {"master": "main"}),
    }

    def __init__(self, root: Path):
        self._root = root
        self._templates: dict[str, Path] = {}
        self._count = 0

    def _template(self, kind: str) -> Path:
        if kind not in self._templates:
            head, branches = self.LAYOUTS[kind]
            work = self._root / f"work-{kind}"
            bare = self._root / f"template-{kind}.git"
            git("init", "-q", "-b", "main", str(work))
            (work / FIXTURE_RULE_PATH).parent.mkdir(parents=True)
            (work / FIXTURE_RULE_PATH).write_text(FIXTURE_RULE)
            git("add", "-A", cwd=work)
            git("commit", "-q", "-m", "Add fixture rule", cwd=work)
            git("init", "-q", "--bare", "-b", head, str(bare))
            for branch, source in branches.items():
                git("push", "-q", str(bare), f"{source}:refs/heads/{branch}", cwd=work)
            self._templates[kind] = bare
        return self._templates[kind]

    def new(self, kind: str = "main") -> str:
        """Returns the `file://` URL of a new bare repository of the given kind."""
        self._count += 1
        path = self._root / f"upstream-{self._count}-{kind}.git"
        shutil.copytree(self._template(kind), path)
        return path.as_uri()


@pytest.fixture(scope="session")
def upstreams(tmp_path_factory) -> Upstreams:
    return Upstreams(tmp_path_factory.mktemp("upstreams"))
