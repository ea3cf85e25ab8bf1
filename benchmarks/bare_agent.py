"""P4's floor: a faust agent (on uvloop, as the worker) on the same broker that consumes one-event records
and only counts them. When it has seen BARE_EXPECT records it writes the time
of the first and the last (epoch ms) and the count to BARE_OUT, and exits.

    BARE_BROKER=127.0.0.1:9092 BARE_TOPIC=T BARE_EXPECT=N BARE_OUT=FILE python -m benchmarks.bare_agent"""

from __future__ import annotations

import os

import faust
import mode.loop

from engine.clock import now_ms

BROKER = os.environ["BARE_BROKER"]
TOPIC = os.environ["BARE_TOPIC"]
EXPECT = int(os.environ["BARE_EXPECT"])
OUT = os.environ["BARE_OUT"]

app = faust.App(f"bare-{TOPIC}", broker=f"kafka://{BROKER}", web_enabled=False,
                datadir=os.path.join(os.path.dirname(OUT), f"bare-{TOPIC}-data"),  # not in the cwd
                consumer_auto_offset_reset="earliest", broker_session_timeout=6.0, broker_heartbeat_interval=2.0)
topic = app.topic(TOPIC, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
seen = {"count": 0, "first": 0, "last": 0}


@app.agent(topic)
async def count(stream):
    async for _ in stream:
        now = now_ms()
        seen["first"] = seen["first"] or now
        seen["count"] += 1
        seen["last"] = now
        if seen["count"] == EXPECT:
            with open(OUT, "w") as out:
                out.write(f"{seen['first']},{seen['last']},{seen['count']}")
            os._exit(0)


if __name__ == "__main__":
    mode.loop.use("uvloop")  # the loop `attimo worker` runs on: a floor with the same loop
    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
