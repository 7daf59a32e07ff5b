"""An sshd on 127.0.0.1 that a test starts itself (Debian's openssh-server): a temporary host key
and user key, a free port, loopback only, and an ssh client configuration naming it as the Host
alias ``device``. CI installs openssh-server (tools/setup.sh) and sets EDGECOMPRESS_REQUIRE_SSHD=1,
so there a missing sshd fails the tests instead of skipping them."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
SFTP_SERVER = next((p for p in (Path("/usr/lib/openssh/sftp-server"), Path("/usr/libexec/openssh/sftp-server"),
                                Path("/usr/lib/ssh/sftp-server")) if p.exists()), None)  # fmt: skip


@dataclass(frozen=True)
class Sshd:
    port: int
    user: str
    config: Path  # ssh client configuration (ssh -F): Host alias "device", the user key, known hosts

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"


def _unavailable(why: str) -> None:
    if os.environ.get("EDGECOMPRESS_REQUIRE_SSHD"):
        pytest.fail(f"{why} (EDGECOMPRESS_REQUIRE_SSHD is set: CI must have it)")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def loopback_sshd(d: Path) -> Iterator[Sshd]:
    if not SSHD.exists() or shutil.which("ssh") is None or shutil.which("scp") is None:
        _unavailable("no /usr/sbin/sshd or ssh/scp client: apt-get install openssh-server (tools/setup.sh does)")
    try:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation directory
    except OSError as e:
        _unavailable(f"cannot create /run/sshd for sshd ({e}); run as root")
    d.mkdir(parents=True, exist_ok=True)
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    port, user = _free_port(), getpass.getuser()
    (d / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}",
        f"AuthorizedKeysFile {d / 'user_key.pub'}", "StrictModes no", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "PermitRootLogin prohibit-password",
        f"PidFile {d / 'sshd.pid'}", "LogLevel ERROR",
        *([f"Subsystem sftp {SFTP_SERVER}"] if SFTP_SERVER else []), ""]))  # fmt: skip
    (d / "ssh_config").write_text("\n".join([
        "Host device", "  HostName 127.0.0.1", f"  Port {port}", f"  User {user}",
        "Host *", f"  IdentityFile {d / 'user_key'}", "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {d / 'known_hosts'}", "  StrictHostKeyChecking accept-new", "  LogLevel ERROR", ""]))  # fmt: skip
    log = open(d / "sshd.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT)
    try:
        sshd = Sshd(port, user, d / "ssh_config")
        deadline = time.time() + 20
        while True:
            r = subprocess.run(["ssh", "-F", str(sshd.config), "-o", "BatchMode=yes", "device", "true"],
                               capture_output=True, text=True, timeout=30)
            if r.returncode == 0:
                break
            if proc.poll() is not None or time.time() > deadline:
                _unavailable(f"the test's sshd did not accept a login: {r.stderr.strip()[-300:]} "
                             f"{(d / 'sshd.log').read_text()[-300:]}")
            time.sleep(0.2)
        yield sshd
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
