"""The MLflow servers `overfit ui` and `overfit server` start: their command lines, checks, life.

Owns: building a lean `mlflow ui` / `mlflow server` command (`ui_command`, `server_command`),
checking a port before seconds of imports (`check_port`), and running a server until it ends
or Ctrl-C (`serve`). Must not: print (it hands what it has to the caller's callbacks) nor
touch a store (the CLI prepares it first).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

SERVER_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


class ServerError(ValueError):
    """A server cannot start as asked; the message is one line naming the option."""


def mlflow_command(
    kind: str, store: str, host: str, port: int, workers: int, *options: str
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `mlflow ui` or `mlflow server` (`kind`), lean:
    `workers` server processes and MLflow's job runner off. The runner (GenAI scorers, trace
    roll-ups: none of them used here) is 8 more processes of ~240 MB each, and its start
    doubles the wait for the first answer; MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true has it."""
    command = [sys.executable, "-m", "mlflow", kind, "--backend-store-uri", store]
    command += ["--host", host, "--port", str(port), "--workers", str(workers), *options]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    # each server process warns of a deprecation inside MLflow, which no user can act on
    quiet = "ignore:starlette.middleware.wsgi is deprecated"
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), quiet]))
    return command, env


def ui_command(store: str, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """`mlflow ui` over `store`: one server process, no access log."""
    return mlflow_command("ui", store, host, port, 1, "--uvicorn-opts", "--no-access-log")


def server_scheme(backend_store_uri: str) -> str:
    """The database kind of a tracking server's store; ServerError when it cannot serve."""
    scheme = backend_store_uri.partition(":")[0].partition("+")[0]
    if scheme not in SERVER_SCHEMES:
        raise ServerError(
            f"--backend-store-uri: expected sqlite:///path.db or postgresql://user:pass@host/db, "
            f"got {backend_store_uri!r}"
        )
    driver = backend_store_uri.partition(":")[0].partition("+")[2] or "psycopg"
    if scheme == "postgresql" and importlib.util.find_spec(driver) is None:
        raise ServerError(
            f"--backend-store-uri {scheme}: its driver ({driver}) is not installed: "
            "pip install '.[postgres]'"
        )
    return scheme


def server_command(
    backend_store_uri: str,
    artifacts_destination: str,
    host: str,
    port: int,
    allowed_hosts: str | None = None,
    workers: int | None = None,
) -> tuple[list[str], dict[str, str], str]:
    """`mlflow server` proxying artifacts to `artifacts_destination` (a folder made absolute,
    or a URI): its command, environment and artifact destination. `workers` defaults to 1 for
    sqlite, which takes one writer at a time, else 4."""
    scheme = server_scheme(backend_store_uri)
    destination = artifacts_destination
    if "://" not in destination:
        destination = str(Path(destination).resolve())
    options = ["--serve-artifacts", "--artifacts-destination", destination]
    if allowed_hosts:
        options += ["--allowed-hosts", allowed_hosts]
    count = workers or (1 if scheme == "sqlite" else 4)
    command, env = mlflow_command("server", backend_store_uri, host, port, count, *options)
    return command, env, destination


def address(host: str) -> str:
    """Where this machine reaches a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def check_port(host: str, port: int) -> None:
    """ServerError when the port is taken (or the address is not of this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ServerError(
                    f"port {port} on {host} is in use (another MLflow UI or server?): stop "
                    "it, or choose another port with --port N"
                ) from None
            raise ServerError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(
    command: list[str],
    env: dict[str, str],
    host: str,
    port: int,
    ready: Callable[[float], None],
    starting: Callable[[], None] | None = None,
) -> int:
    """Run an MLflow server until it ends or Ctrl-C: `starting()` as it starts, `ready(seconds)`
    once it answers. Returns its exit code (0 after Ctrl-C)."""
    check_port(host, port)  # again: it may have been taken meanwhile
    health = f"http://{address(host)}:{port}/health"
    started = time.monotonic()
    process = subprocess.Popen(command, env=env)
    try:
        if starting is not None:
            try:
                starting()
            except BaseException:
                process.terminate()
                process.wait()
                raise
        while process.poll() is None:
            try:
                with urllib.request.urlopen(health, timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                time.sleep(0.5)
        if process.poll() is None:
            ready(time.monotonic() - started)
        return process.wait()
    except KeyboardInterrupt:  # the server had the terminal's Ctrl-C too
        try:
            process.wait(timeout=15)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            process.terminate()
            process.wait()
        return 0
