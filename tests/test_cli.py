"""The attimo command: check, sign, demo starting and stopping cleanly, and the
README's journey walk-through run as written against `attimo demo`."""

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from engine.testing.processes import free_port, wait_until
from tests.conftest import ROOT


def attimo(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, **kwargs)


def test_check_accepts_the_demo_catalog():
    done = attimo("check", "examples/catalog.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: 3 placements" in done.stdout


def test_check_prints_every_problem_with_its_path_and_exits_1(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "placements: [hero]\n"
        "offers:\n"
        "  - {id: a, kind: popup, placements: [hero]}\n"
        "  - {id: b, kind: banner, placements: [side], when: {trait: age, between: [9, 1]}}\n"
    )
    done = attimo("check", str(bad))
    assert done.returncode == 1
    lines = done.stdout.strip().splitlines()
    assert f"{bad}: offers[0].kind: one of content, banner, discount" in lines
    assert f"{bad}: offers[1].placements: no placement named 'side'" in lines
    assert f"{bad}: offers[1].when.between: between: low 9 is above high 1" in lines


def test_check_reports_yaml_syntax_errors_with_line(tmp_path: Path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("placements: [hero\noffers: []\n")
    done = attimo("check", str(broken))
    assert done.returncode == 1 and "line 2" in done.stdout and "not valid YAML" in done.stdout


def test_check_reports_an_unreadable_file():
    done = attimo("check", "/dev/null/nope.yaml")
    assert done.returncode == 1 and "cannot read" in done.stdout


def test_sign_prints_the_hmac_of_the_user_id():
    done = attimo("sign", "u-42", "--secret", "s3cret")
    assert done.stdout.strip() == hmac.new(b"s3cret", b"u-42", hashlib.sha256).hexdigest()


def _children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.add(int(entry.name))
    return found


def test_demo_serves_seeded_people_and_ctrl_c_leaves_no_process():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "demo", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(port), 30, 0.1, "attimo demo to be ready")
        children = _children_of(process.pid)
        assert children, "demo should run its own redis-server"
        answer = httpx.post(f"{base}/v1/decide", headers={"Authorization": "Bearer demo-server-token"},
                            json={"user_id": "u-marco", "placements": ["sidebar"]}).json()
        assert answer["placements"]["sidebar"]["offer"] == "talk_to_sales"
        # The console opens with the token the demo prints.
        signed_in = httpx.post(f"{base}/console/sign-in", data={"token": "demo-server-token"})
        assert signed_in.status_code == 303 and "attimo_console=" in signed_in.headers["set-cookie"]
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
        assert process.returncode == 0, output
        assert "curl -s" in output
        assert f"{base}/console (sign in with the server token demo-server-token)" in output
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _readme_blocks(heading: str) -> list[str]:
    """The ```sh blocks of one README section, as written there."""
    text = (ROOT / "README.md").read_text()
    section = text.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    return [block.split("\n", 1)[1] for block in section.split("```sh")[1:] for block in [block.split("```")[0]]]


def _json_documents(text: str) -> list:
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        document, at = decoder.raw_decode(text, at)
        found.append(document)
    return found


def test_the_readme_journey_walkthrough_sends_the_email_and_fills_the_inbox(tmp_path):
    """README "Add a journey and watch it run", its two blocks as written: the
    catalog edit and `attimo check` in a copy of the project's examples, then
    `attimo demo` with that catalog, then the curl lines against it."""
    edit, calls = _readme_blocks("### Add a journey and watch it run")
    *setup, demo_line = edit.strip().splitlines()
    assert demo_line == "attimo demo --catalog my-catalog.yaml"
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "catalog.yaml").write_text((ROOT / "examples" / "catalog.yaml").read_text())
    shell_attimo = f'attimo() {{ "{sys.executable}" -m engine.cli "$@"; }}\n'
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(["bash", "-euc", shell_attimo + "\n".join(setup)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "my-catalog.yaml: ok:" in done.stdout, done.stdout + done.stderr
    port = free_port()
    demo = subprocess.Popen([sys.executable, "-m", "engine.cli", "demo", "--port", str(port),
                             "--catalog", "my-catalog.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    script = calls.replace("localhost:8000", f"127.0.0.1:{port}")
    answers: list = []
    try:
        wait_until(lambda: _ready(port), 30, 0.1, "attimo demo to be ready")

        def delivered() -> bool:
            # The events carry ids, so running the block again changes nothing.
            out = subprocess.run(["bash", "-euc", script], capture_output=True, text=True, timeout=30).stdout
            answers[:] = _json_documents(out)
            return len(answers) == 4 and any(item.get("to") == ["zoe@example.com"]
                                             for item in answers[1]["outbox"])

        wait_until(delivered, 20, 0.2, "the demo's SMTP sink to receive the email")
    finally:
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=20)
    accepted, outbox, inbox, person = answers
    assert accepted["accepted"] + accepted.get("duplicates", 0) == 3
    [email] = [item for item in outbox["outbox"] if item.get("to") == ["zoe@example.com"]]
    assert email["subject"] == "Your demo, Zoe" and "pick a time at https://shop.example/demo" in email["text"]
    assert "/v1/unsubscribe?" in email["list_unsubscribe"]
    [message] = inbox["messages"]
    assert message["template"] == "demo_thanks" and message["title"] == "Your demo, Zoe"
    assert "demo_request" in person["journeys"]["entered"]
    assert {(m["channel"], m["status"]) for m in person["messages"]["recent"]} == {("email", "sent"), ("inbox", "sent")}


def _demo() -> tuple[int, subprocess.Popen]:
    """`attimo demo` on a free port, from the project's root."""
    port = free_port()
    return port, subprocess.Popen([sys.executable, "-m", "engine.cli", "demo", "--port", str(port)], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200
    except httpx.TransportError:
        return False


def test_the_readme_learning_walkthrough_explains_reports_and_shows_the_model():
    """README "Let a placement learn", its curl block as written against `attimo demo`."""
    [calls] = _readme_blocks("### Let a placement learn")
    port, demo = _demo()
    try:
        wait_until(lambda: _ready(port), 30, 0.1, "attimo demo to be ready")
        out = subprocess.run(["bash", "-euc", calls.replace("localhost:8000", f"127.0.0.1:{port}")],
                             capture_output=True, text=True, timeout=30)
    finally:
        demo.send_signal(signal.SIGINT)
        printed, _ = demo.communicate(timeout=20)
    explained, experiment, model = _json_documents(out.stdout)
    rows = explained["explain"]["cart_banner"]["offers"]
    assert {row["offer"] for row in rows} >= {"cart_crm_addon", "cart_crm_onboarding"}
    [chosen] = [row for row in rows if row.get("chosen")]
    assert 0 < chosen["probability"] <= 1 and {"worth", "lever", "expected_value"} <= set(chosen)
    assert explained["explain"]["_experiments"]["cart_learning"] == "learnt"  # a-shopper's arm: expected value
    assert set(experiment["arms"]) == {"priority_order", "learnt"} and "srm" in experiment
    assert model["learning"]["reward"] == "click" and model["age_ms"] < 5000
    assert "attimo evaluate --catalog examples/catalog.yaml --redis-url redis://" in printed


def test_the_readme_retargeting_walkthrough_reaches_the_webhook_and_the_customer_list():
    """README "Send a segment to an ad platform", its curl block as written against `attimo demo`."""
    [calls] = _readme_blocks("### Send a segment to an ad platform")
    port, demo = _demo()
    script = calls.replace("localhost:8000", f"127.0.0.1:{port}")
    found: dict = {}
    try:
        wait_until(lambda: _ready(port), 30, 0.1, "attimo demo to be ready")

        def delivered() -> bool:  # the events carry ids: running the block again changes nothing
            out = subprocess.run(["bash", "-euc", script], capture_output=True, text=True, timeout=30).stdout
            accepted, segments, outbox = _json_documents(out.split("Email,Phone")[0])
            found.update(accepted=accepted, segments=segments, outbox=outbox, csv="Email,Phone" + out.split(
                "Email,Phone", 1)[1] if "Email,Phone" in out else "")
            hooks = [item for item in outbox["outbox"] if item.get("channel") == "audiences"]
            people = {c.get("person") for item in hooks for c in item["body"]["changes"]}
            return {"u:u-sam", "a:a-reader"} <= people
        wait_until(delivered, 20, 0.5, "the audience webhook to receive Sam and the reader")
    finally:
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=20)
    [segment] = [s for s in found["segments"]["segments"] if s["id"] == "crm_pricing_no_purchase"]
    assert segment["tracked"] and segment["size"] == 2 and segment["last_change"] > 0
    rows = found["csv"].strip().splitlines()
    sam = hashlib.sha256(b"sam@example.com").hexdigest()
    assert rows == ["Email,Phone", f"{sam},"]  # the reader has no email: not in the list


def test_the_demo_prints_its_console_and_the_console_shows_its_own_traffic():
    """Issue 17's "done when": the console's address is printed, and its
    figures show the demo's requests within a minute."""
    port, demo = _demo()
    try:
        wait_until(lambda: _ready(port), 30, 0.1, "attimo demo to be ready")
        base, token = f"http://127.0.0.1:{port}", {"Authorization": "Bearer demo-server-token"}
        for _ in range(20):
            httpx.post(f"{base}/v1/decide", headers=token, json={"user_id": "u-marco", "placements": ["sidebar"]})

        def decides_shown() -> bool:
            overview = httpx.get(f"{base}/v1/ops/overview", params={"minutes": 5}, headers=token).json()
            return overview["endpoints"].get("decide", {}).get("total", {}).get("count", 0) >= 20

        wait_until(decides_shown, 60, 0.5, "the console's figures to show the demo's decides")
        page = httpx.get(f"{base}/console", follow_redirects=True)
        assert page.status_code == 200 and "sign" in page.text.lower()
    finally:
        demo.send_signal(signal.SIGINT)
        printed, _ = demo.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/console" in printed
