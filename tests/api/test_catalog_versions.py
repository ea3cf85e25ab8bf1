"""Catalog versions through a real `attimo serve`: each publish numbered with
who and why, the source in force read back, diffs, validation with lines, and
rolling back."""

from tests.conftest import ROOT

DEMO = (ROOT / "examples" / "catalog.yaml").read_text()
SMALL = """placements:
  home_hero: {description: hero}
offers:
  - id: only
    kind: content
    placements: [home_hero]
    content: {title: Only}
"""
BROKEN = """placements:
  home_hero: {}
offers:
  - id: bad
    kind: banner
    placements: [home_hero, nowhere]
    content: {title: Bad}
    when: {trait: age, at_least: old}
"""


def test_each_publish_is_a_version_with_its_author_and_message_and_can_be_rolled_back(clean_api):
    with clean_api.server() as client:
        first = client.get("/v1/admin/catalog")
        assert first.status_code == 200 and first.text == DEMO
        demo_version = int(first.headers["x-attimo-catalog-version"])
        answer = client.post("/v1/admin/catalog", params={"message": "one offer only"}, content=SMALL)
        assert answer.status_code == 200 and answer.json()["version"] == demo_version + 1
        assert client.get("/v1/admin/catalog").text == SMALL
        versions = client.get("/v1/admin/catalog/versions").json()
        assert versions["in_force"] == demo_version + 1
        newest = versions["versions"][0]
        assert (newest["n"], newest["author"], newest["message"], newest["offers"]) == \
            (demo_version + 1, "server token", "one offer only", 1)
        assert client.get(f"/v1/admin/catalog/versions/{demo_version}").text == DEMO
        diff = client.get("/v1/admin/catalog/diff", params={"from": demo_version, "to": demo_version + 1}).json()
        assert diff["diff"].startswith(f"--- version {demo_version}\n+++ version {demo_version + 1}\n")
        assert "+  - id: only\n" in diff["diff"]
        # roll back: the demo again, as a new version that says so
        restored = client.post(f"/v1/admin/catalog/versions/{demo_version}/restore")
        assert restored.status_code == 200 and restored.json()["version"] == demo_version + 2
        assert client.get("/v1/admin/catalog").text == DEMO
        assert client.get("/v1/admin/catalog/versions").json()["versions"][0]["message"] == \
            f"restore of version {demo_version}"
        decided = client.post("/v1/decide", json={"anonymous_id": "a-v", "placements": ["home_hero"]}).json()
        assert decided["placements"]["home_hero"]["offer"] != "only"


def test_a_draft_is_checked_with_every_problem_at_its_line_and_nothing_changes(clean_api):
    with clean_api.server() as client:
        before = client.get("/v1/admin/catalog/versions").json()["in_force"]
        checked = client.post("/v1/admin/catalog/validate", content=BROKEN)
        assert checked.status_code == 422
        lines = {problem["path"]: problem["line"] for problem in checked.json()["problems"]}
        assert lines["offers[0].placements"] == 6 and lines["offers[0].when.at_least"] == 8, lines
        published = client.post("/v1/admin/catalog", content=BROKEN)
        assert published.status_code == 422 and published.json()["problems"][0]["line"] is not None
        assert client.get("/v1/admin/catalog/versions").json()["in_force"] == before  # nothing published
        good = client.post("/v1/admin/catalog/validate", content=SMALL).json()
        assert good["ok"] and good["offers"] == 1
        assert client.get("/v1/admin/catalog/versions/999").status_code == 404
        assert client.get("/v1/admin/catalog/diff", params={"from": "x", "to": 1}).status_code == 422
