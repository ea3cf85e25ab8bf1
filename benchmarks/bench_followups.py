"""Follow-up delivery: how many messages per second one `attimo scheduler`
sustains against a floor (a bare loop claiming from the same due queue and
posting to the same sink, benchmarks/bare_scheduler.py), and how late due
messages go out at 50 % and 80 % of the capacity measured in the same run (a
fixed rate passes on a fast day and fails on a slow one), and at 1k due/s.
Local SMTP (aiosmtpd) and webhook sinks. P9: lateness p99 <= 1 s at half
capacity, capacity >= 0.5 x the floor.

    python -m benchmarks.bench_followups [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
from redis.asyncio import BlockingConnectionPool, Redis

from benchmarks.harness import LOADGEN_CORE, SERVER_CORE
from benchmarks.report import RESULTS_DIR, print_figures
from engine.clock import now_ms
from engine.followups.contacts import ContactStore
from engine.followups.due_queue import DueQueue
from engine.followups.message import Message
from engine.testing.processes import RedisServer, pin_current_process, start_pinned
from engine.testing.sinks import SmtpSink, WebhookReceiver

ROOT = Path(__file__).resolve().parent.parent
EMAIL_SHARE = 10  # one message in ten is an email, the rest push webhooks
SCHEDULER_CORE, SINK_CORE = SERVER_CORE, LOADGEN_CORE  # the scheduler has a core to itself


def message(phase: str, i: int, due_ms: int, smtp: bool) -> Message:
    person = f"p-{i}"
    if smtp:
        return Message(id=f"{phase}-e-{i}", person=person, channel="email", due_ms=due_ms, template="bench",
                       purpose="transactional",
                       body={"to": f"{person}@example.com", "subject": "Hi", "text": "Hello {{ n }}",
                             "values": {"n": i}})
    return Message(id=f"{phase}-w-{i}", person=person, channel="push", due_ms=due_ms, template="bench",
                   body={"text": "Hello", "due_ms": due_ms})


async def fill(phase: str, redis_url: str, count: int, start_ms: int, rate: float,
               email_share: int = EMAIL_SHARE) -> dict[str, int]:
    redis = Redis(connection_pool=BlockingConnectionPool.from_url(redis_url, max_connections=32, timeout=10))
    queue, contacts = DueQueue(redis), ContactStore(redis)
    due: dict[str, int] = {}
    batch = []
    for i in range(count):
        m = message(phase, i, start_ms + int(i * 1000 / rate), bool(email_share) and i % email_share == 0)
        due[m.id] = m.due_ms
        batch.append(m)
        if len(batch) == 500 or i == count - 1:
            await asyncio.gather(queue.schedule_many(batch),
                                 *(contacts.set_consent(x.person, "email", "*", True) for x in batch if x.channel == "email"))
            batch = []
    await redis.aclose()
    return due


SCHEDULER = [sys.executable, "-m", "engine.cli", "scheduler"]
BARE = [sys.executable, "-m", "benchmarks.bare_scheduler"]


def run_phase(phase: str, redis_url: str, receiver, smtp, count: int, rate: float, env: dict,
              command: list[str] = SCHEDULER, email_share: int = EMAIL_SHARE) -> dict:
    receiver.received.clear()
    smtp.messages.clear()
    smtp.inbox.arrived_ms.clear()
    process = start_pinned(command, SCHEDULER_CORE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # Everything is queued before the first message falls due (about 20k schedules/s here).
    start_ms = now_ms() + 2000 + count // 10
    due = asyncio.run(fill(phase, redis_url, count, start_ms, rate, email_share))
    lead_left_ms = start_ms - time.time() * 1000
    seen_at: dict[str, float] = {}
    deadline = time.monotonic() + 60 + count / rate
    webhook_i = smtp_i = 0
    try:
        while len(seen_at) < count and time.monotonic() < deadline:
            while webhook_i < len(receiver.received):
                got = receiver.received[webhook_i]
                if got.headers["idempotency-key"] in due:  # not a late one of the phase before
                    seen_at.setdefault(got.headers["idempotency-key"], got.at_ms)
                webhook_i += 1
            while smtp_i < len(smtp.messages):
                _, email = smtp.messages[smtp_i]
                if email["X-Attimo-Message-Id"] in due:
                    seen_at.setdefault(email["X-Attimo-Message-Id"], smtp.inbox.arrived_ms[smtp_i])
                smtp_i += 1
            time.sleep(0.005)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    lateness = np.array([seen_at[k] - due[k] for k in seen_at])
    first, last = min(due.values()), max(seen_at.values()) if seen_at else 0
    return {"sent": len(seen_at), "lost": count - len(seen_at), "lateness": lateness,
            "span_s": (last - first) / 1000, "lead_left_ms": lead_left_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about a minute")
    args = parser.parse_args()
    burst = 5_000 if args.quick else 20_000
    paced_s = 8 if args.quick else 40  # seconds of messages at each share of capacity
    fixed = (10_000, 1000.0) if args.quick else (100_000, 1000.0)  # the old P9: count, due/s
    pin_current_process(SINK_CORE)  # the sinks' threads and the filling run here, beside Redis
    receiver, smtp = WebhookReceiver().start(), SmtpSink().start()
    with RedisServer(SINK_CORE) as redis_server:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ATTIMO_REDIS_URL": redis_server.url,
               "ATTIMO_WEBHOOK_URLS": f"push={receiver.url}", "ATTIMO_WEBHOOK_SECRET": "bench",
               "ATTIMO_SMTP_PORT": str(smtp.port), "ATTIMO_TRACKING_SECRET": "bench",  # else its defaults
               "BARE_REDIS": redis_server.url, "BARE_URL": receiver.url}
        # Capacity, webhooks only (the floor posts nothing else): the floor, the scheduler, the floor again.
        floors = [run_phase(f"floor{n}", redis_server.url, receiver, smtp, burst, 1e9, env, BARE, 0)
                  for n in (1,)]
        burst_run = run_phase("burst", redis_server.url, receiver, smtp, burst, 1e9, env, SCHEDULER, 0)
        floors.append(run_phase("floor2", redis_server.url, receiver, smtp, burst, 1e9, env, BARE, 0))
        capacity = burst_run["sent"] / max(burst_run["span_s"], 1e-3)
        floor = float(np.median([f["sent"] / max(f["span_s"], 1e-3) for f in floors]))
        log(f"capacity: scheduler {capacity:.0f} messages/s, floor {floor:.0f}/s")
        shares = {}
        for share in (0.5, 0.8):
            rate = share * capacity
            shares[share] = run_phase(f"share{share}", redis_server.url, receiver, smtp, int(rate * paced_s),
                                      rate, env)
            late = shares[share]["lateness"]
            log(f"{share:.0%} of capacity ({rate:.0f}/s): lateness p99 {np.percentile(late, 99):.0f} ms")
        paced_run = run_phase("paced", redis_server.url, receiver, smtp, fixed[0], fixed[1], env)
    receiver.stop()
    smtp.stop()

    def p(run: dict, q: float) -> float:
        return float(np.percentile(run["lateness"], q)) if len(run["lateness"]) else float("nan")

    late = paced_run["lateness"]
    figures = {
        "scheduler_messages_per_s": capacity,
        "scheduler_floor_messages_per_s": floor,
        "scheduler_over_floor": capacity / floor,
        "lateness_p50_ms_at_half": p(shares[0.5], 50),
        "lateness_p99_ms_at_half": p(shares[0.5], 99),
        "lateness_p99_ms_at_80": p(shares[0.8], 99),
        "due_per_s_at_half": 0.5 * capacity,
        "lateness_p50_ms": p(paced_run, 50),
        "lateness_p99_ms": p(paced_run, 99),
        "lateness_max_ms": float(late.max()) if len(late) else float("nan"),
        "paced_messages": fixed[0], "paced_due_per_s": fixed[1],
        "lost": paced_run["lost"] + burst_run["lost"] + sum(r["lost"] for r in shares.values()),
        "messages_per_s": capacity,  # the old key: the same figure
        "email_share": 1 / EMAIL_SHARE,
        "queued_with_lead_ms": paced_run["lead_left_ms"],
    }
    write_results(figures, shares[0.5]["lateness"], args.quick)
    print_figures(figures)


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def write_results(figures: dict, lateness: np.ndarray, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = "bench_followups"
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(lateness):
        ordered = np.sort(lateness)
        ax.plot(ordered, 1 - np.arange(len(ordered)) / len(ordered))
        ax.set_yscale("log")
    ax.axvline(1000, color="red", linestyle="--", label="P9 target p99 1 s")
    ax.set_xlabel("lateness after due time (ms)")
    ax.set_ylabel("fraction later than x")
    ax.set_title(f"Follow-ups: lateness at half capacity ({figures['due_per_s_at_half']:.0f} due/s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / f"{name}_lateness.png", dpi=100)
    plt.close(fig)
    lines = [
        "# Follow-ups: lateness and throughput of one scheduler", "",
        f"- command: `python -m benchmarks.bench_followups{' --quick' if quick else ''}`",
        f"- machine: {os.cpu_count()} cores; the scheduler pinned to core {SCHEDULER_CORE}; Redis, the SMTP "
        f"and webhook sinks and the filling on core {SINK_CORE}",
        "- capacity: a burst of webhooks all due at once, through `attimo scheduler` and through the floor (a "
        "bare loop claiming from the same queue and posting to the same sink, no policy), floor, scheduler, floor",
        f"- lateness: messages due at 50 % and 80 % of that capacity ({figures['email_share']:.0%} email over "
        f"SMTP, the rest push webhooks), then {figures['paced_messages']} at a fixed {figures['paced_due_per_s']:.0f}/s",
        "",
        "| scheduler messages/s | floor messages/s | over floor | lateness p99 at 50 % | at 80 % | at 1k/s | lost |",
        "|---|---|---|---|---|---|---|",
        f"| {figures['scheduler_messages_per_s']:.0f} | {figures['scheduler_floor_messages_per_s']:.0f} "
        f"| {figures['scheduler_over_floor']:.2f} | {figures['lateness_p99_ms_at_half']:.0f} ms "
        f"| {figures['lateness_p99_ms_at_80']:.0f} ms | {figures['lateness_p99_ms']:.0f} ms | {figures['lost']} |", "",
        "Targets (P9): lateness p99 <= 1000 ms at half capacity; capacity >= 0.5 x the floor.", "",
        f"![lateness]({name}_lateness.png)", "", "```json", orjson.dumps(figures).decode(), "```", ""]
    (RESULTS_DIR / f"{name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
