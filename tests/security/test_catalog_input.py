"""Catalogs built to hurt: an alias bomb, a self-referencing anchor, Python
object tags, a mistyped trigger, YAML 1.1's `on:`, oversized content. Each is a
422 with the problem and where it is, at once, through the real API and
`attimo check`; the catalog in force stays."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

BOMB = """
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
placements: [hero]
offers:
  - {id: o, kind: content, placements: [hero], content: *g}
"""
SELF_REFERENCE = "placements: &p [hero, *p]\noffers: []\n"
BINARY = "placements: [hero]\noffers:\n  - {id: o, kind: content, placements: [hero], content: !!binary aGVsbG8=}\n"
A_SET = "placements: [hero]\noffers:\n  - {id: o, kind: content, placements: [hero], content: !!set {a, b}}\n"
MISTYPED_TRIGGER = """
segments:
  - {id: s, when: {trait: vip, equals: true}}
templates:
  t: {subject: hi, text: hi}
journeys:
  - id: j
    trigger: {segment: {not: s}}
    steps:
      - send: {channel: email, template: t}
"""
ON_KEY = """
templates:
  t: {subject: hi, text: hi}
journeys:
  - id: j
    on: {event: signup}
    trigger: {event: signup}
    steps:
      - send: {channel: email, template: t}
"""
HUGE_CONTENT = "placements: [hero]\noffers:\n  - {id: o, kind: content, placements: [hero], content: {html: '" + \
    "x" * 20_000 + "'}}\n"


def publish(api, text: str):
    with api.server() as client:
        started = time.monotonic()
        answer = client.post("/v1/admin/catalog", content=text)
        return answer, time.monotonic() - started


@pytest.mark.parametrize(("text", "path", "reason"), [
    (BOMB, "line ", "aliases (*a) are not allowed"),
    (SELF_REFERENCE, "line 1, column", "aliases"),
    (BINARY, "line 3, column", "!!binary is not allowed"),
    (A_SET, "line 3, column", "!!set is not allowed"),
    (MISTYPED_TRIGGER, "journeys[0].trigger.segment", "the id of a segment"),
    (ON_KEY, "journeys[0].on", "unknown"),
    (HUGE_CONTENT, "offers[0].content", "larger than 16 KB"),
])
def test_a_hostile_catalog_is_a_problem_with_its_place_at_once(clean_api, text, path, reason):
    before = clean_api.post_catalog((ROOT / "examples" / "catalog.yaml").read_text())["digest"]
    answer, took = publish(clean_api, text)
    assert answer.status_code == 422, answer.text
    assert any(p["path"].startswith(path) and reason in p["reason"] for p in answer.json()["problems"]), answer.text
    assert took < 1.0
    with clean_api.server() as client:
        assert client.get("/readyz").json()["catalog"] == before  # the catalog in force stays


@pytest.mark.parametrize("text", [BOMB, SELF_REFERENCE, BINARY, MISTYPED_TRIGGER])
def test_attimo_check_reports_a_hostile_catalog_without_a_traceback(tmp_path, text):
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "engine.cli", "check", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert str(path) in done.stderr + done.stdout


def test_yaml_1_1_words_stay_text():
    from engine.catalog.loader import parse_catalog_text

    spec = parse_catalog_text("on: yes\noff: no\nflag: true\ny: n\n")
    assert spec == {"on": "yes", "off": "no", "flag": True, "y": "n"}


@pytest.mark.parametrize(("text", "reason"), [
    ("placements: " + "[" * 1000 + "]" * 1000 + "\n", "nested too deep"),
    ("placements: [hero]\noffers:\n  - {id: o, kind: content, placements: [hero], start: 2024-02-30}\n", "cannot read"),
    ("placements: [hero]\noffers:\n  - {id: o, kind: content, placements: [hero], content: {x: 99999999999999999999999}}\n",
     "past 64 bits"),
    ("placements: [hero]\noffers:\n  - {id: o, kind: content, placements: [hero], priority: .nan}\n", "finite"),
])
def test_what_yaml_itself_chokes_on_is_a_problem_too(clean_api, text, reason):
    answer, _ = publish(clean_api, text)
    assert answer.status_code == 422, answer.text
    assert any(reason in p["reason"] for p in answer.json()["problems"]), answer.text
