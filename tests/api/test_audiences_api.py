"""Tracked segments through a real `attimo serve` with the demo catalog: sizes,
members page by page, the customer list, and what a browser may not do."""

import hashlib

import orjson

PRICING = {"category": "crm", "page_type": "pricing"}


def readers(api, n: int) -> None:
    """n people reading CRM pricing three times (the demo's tracked segment),
    the even ones with an email and advertising consent."""
    events = []
    for i in range(n):
        user = f"u-reader{i}"
        events += [{"id": f"r{i}-{k}", "type": "page_view", "user_id": user, "properties": PRICING} for k in range(3)]
        if i % 2 == 0:
            events += [{"id": f"r{i}-id", "type": "identify", "user_id": user, "traits": {"email": f"R{i}@Example.com"}},
                       {"id": f"r{i}-ads", "type": "consent", "user_id": user,
                        "properties": {"channel": "ads", "purpose": "advertising", "granted": True}}]
    with api.server() as client:
        assert client.post("/v1/events", json={"events": events}).status_code == 202


def test_sizes_pages_and_the_customer_list_of_a_tracked_segment(clean_api):
    readers(clean_api, 7)
    with clean_api.server() as client:
        segments = {s["id"]: s for s in client.get("/v1/segments").json()["segments"]}
        audience = segments["crm_pricing_no_purchase"]
        assert audience["tracked"] and audience["size"] == 7 and audience["last_change"] > 0
        assert {d["id"] for d in audience["destinations"]} == {"crm_retargeting", "crm_customer_match"}
        assert segments["registered"]["tracked"] is False and segments["registered"]["size"] is None
        seen, cursor, pages = [], None, 0
        while True:
            page = client.get("/v1/segments/crm_pricing_no_purchase/members",
                              params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
            seen += page["members"]
            cursor, pages = page["next"], pages + 1
            if cursor is None:
                break
        assert sorted(set(seen)) == sorted(f"u:u-reader{i}" for i in range(7)) and pages >= 3
        lines = client.get("/v1/segments/crm_pricing_no_purchase/export", params={"format": "jsonl"}).text
        rows = [orjson.loads(line) for line in lines.splitlines()]
        assert sorted(r["person"] for r in rows) == [f"u:u-reader{i}" for i in (0, 2, 4, 6)]  # consent only
        assert {r["email_sha256"] for r in rows} == {hashlib.sha256(f"r{i}@example.com".encode()).hexdigest()
                                                     for i in (0, 2, 4, 6)}
        # a purchase takes one out at once, and the size follows
        bought = {"id": "buy-1", "type": "purchase", "user_id": "u-reader1",
                  "properties": {"category": "crm", "order_id": "o-1", "value": 10}}
        assert client.post("/v1/events", json={"events": [bought]}).status_code == 202
        sizes = {s["id"]: s["size"] for s in client.get("/v1/segments").json()["segments"]}
        assert sizes["crm_pricing_no_purchase"] == 6


def test_unknown_untracked_and_bad_requests_are_refused_with_a_reason(clean_api):
    with clean_api.server() as client:
        assert client.get("/v1/segments/nope/members").status_code == 404
        answer = client.get("/v1/segments/registered/members")
        assert answer.status_code == 422 and "not tracked" in answer.json()["error"]
        assert client.get("/v1/segments/crm_pricing_no_purchase/members", params={"cursor": "x"}).status_code == 422
        assert client.get("/v1/segments/crm_pricing_no_purchase/members", params={"limit": 0}).status_code == 422
        assert client.get("/v1/segments/crm_pricing_no_purchase/export", params={"shape": "tiktok"}).status_code == 422
    with clean_api.browser() as client:
        assert client.get("/v1/segments").status_code == 403  # the site key is not a server token
        forged = {"id": "f1", "type": "segment_exited", "anonymous_id": "a-x",
                  "properties": {"segment": "crm_pricing_no_purchase"}}
        answer = client.post("/v1/events", json={"events": [forged]})
        assert answer.status_code == 422 and "made by Attimo" in answer.json()["error"]
