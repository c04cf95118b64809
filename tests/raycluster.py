"""A Ray cluster started apart from the tests, as a user's `ray start --head` (issue 18), in a sandbox:
its own HOME (so ~/.ray/auth_token is the sandbox's, never the real one) and RAY_TMPDIR (sessions and the
`auto` address file), killed by its process group (never `ray stop`, which stops every Ray on the machine)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY_VARS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_TMPDIR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sandbox(prefix: str = "cnr") -> Path:
    """A short temp folder (Ray's socket paths under it must stay < 108 bytes) with home/ and tmp/."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    (root / "home").mkdir()
    (root / "tmp").mkdir()
    return root


def ray_env(root: Path, home: Path | None = None, **extra: str) -> dict[str, str]:
    """os.environ without the user's Ray settings, HOME and RAY_TMPDIR in the sandbox, progress lines on."""
    env = {k: v for k, v in os.environ.items() if k not in RAY_VARS}
    env.update(HOME=str(home or root / "home"), RAY_TMPDIR=str(root / "tmp"), CNNVIS_PROGRESS_EVERY="0",
               RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Cluster:
    """`ray start --head --block` with 2 CPUs, a GCS port and a Ray Client port; stop() ends it all."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port, self.client_port = free_port(), free_port()
        self.log = log
        ray = Path(sys.executable).with_name("ray")
        cmd = [str(ray), "start", "--head", "--block", "--num-cpus", "2", "--include-dashboard", "false",
               "--port", str(self.port), "--ray-client-server-port", str(self.client_port),
               "--disable-usage-stats"]
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.time()
        while not (_answers(self.port) and _answers(self.client_port)):
            if self.proc.poll() is not None or time.time() - t0 > 90:
                self.stop()
                raise RuntimeError(f"ray start failed: {log.read_text()[-3000:]}")
            time.sleep(0.3)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def kill(self) -> None:
        """The cluster goes away at once: SIGKILL to every process of it (its own process group), as when
        its head node is lost. Also how a test stops one: it has nothing to drain or keep."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    stop = kill


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
