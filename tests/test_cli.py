"""The attimo command: check, sign, and demo starting and stopping cleanly."""

import hashlib
import hmac
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from engine.local_redis import free_port
from tests.conftest import ROOT, wait_until


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

        def up():
            try:
                return httpx.get(f"{base}/readyz", timeout=0.5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 30, 0.1, "attimo demo to be ready")
        children = _children_of(process.pid)
        assert children, "demo should run its own redis-server"
        answer = httpx.post(f"{base}/v1/decide", headers={"Authorization": "Bearer demo-server-token"},
                            json={"user_id": "u-marco", "placements": ["sidebar"]}).json()
        assert answer["placements"]["sidebar"]["offer"] == "talk_to_sales"
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
        assert process.returncode == 0, output
        assert "curl -s" in output
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
