"""A real Debian nginx serving mTLS from certificate files, run as a foreground child.

Everything nginx writes (pid, logs, temp dirs) lives in its own directory, so it runs under
any uid, and `reload_argv` is the exact `nginx -s reload` for this instance.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from devtools.harness.other_uids import as_user
from devtools.harness.ports import free_port
from devtools.harness.waiting import wait_for

NGINX_BIN = shutil.which("nginx") or "/usr/sbin/nginx"

_CONFIG = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {server_name};
        ssl_certificate {certs}/svid.pem;
        ssl_certificate_key {certs}/svid_key.pem;
        ssl_client_certificate {certs}/bundle.pem;
        ssl_verify_client on;
        ssl_verify_depth 4;
        location / {{
            return 200 "verify=$ssl_client_verify serial=$ssl_client_serial\\n";
        }}
    }}
}}
"""


@dataclass
class NginxProcess:
    """nginx in `directory` serving TLS on 127.0.0.1:`port` with the files in `certs`."""

    directory: Path
    certs: Path
    server_name: str
    uid: int | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.config_path.write_text(
            _CONFIG.format(
                dir=self.directory, port=self.port, server_name=self.server_name, certs=self.certs
            )
        )

    @property
    def config_path(self) -> Path:
        return self.directory / "nginx.conf"

    def _argv(self, *extra: str) -> list[str]:
        return [
            NGINX_BIN,
            "-p",
            str(self.directory),
            "-c",
            str(self.config_path),
            "-e",
            str(self.directory / "error.log"),
            *extra,
        ]

    @property
    def reload_argv(self) -> list[str]:
        return self._argv("-s", "reload")

    def start(self, timeout: float = 30) -> None:
        """Start in the foreground (`daemon off`) and wait until the port accepts."""
        self.process = subprocess.Popen(
            [*as_user(self.uid), *self._argv("-g", "daemon off;")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._accepting, timeout, f"nginx to listen on port {self.port}")

    def _accepting(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.error_log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def settled(self) -> bool:
        """One worker accepts connections: no worker from before a reload still takes them.

        After `nginx -s reload` old and new workers both accept until the old ones handle
        their QUIT, which is when they retitle themselves "... is shutting down".
        """
        if self.process is None:
            return False
        try:
            titles = [
                " ".join(c.cmdline()).strip() for c in psutil.Process(self.process.pid).children()
            ]
        except psutil.Error:
            return False
        return titles.count("nginx: worker process") == 1

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 20) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then the master exits
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
