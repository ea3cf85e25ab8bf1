"""The links in emails, attacked: a field boundary moved (the old separator
join could be re-split without breaking the signature, and a click link became
`302 Location: //evil.example`), a relative or control-character target, an
expired link, and a mail scanner following the unsubscribe link."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

import pytest

from engine.followups.channels.email import Tracker, TrackingLinkExpired, TrackingLinkInvalid
from engine.testing.processes import SITE_SECRET, start_api, stop_api

SECRET = SITE_SECRET.encode()


@pytest.fixture(scope="module")
def links_api(redis_server, tmp_path_factory):
    server = start_api(redis_server.url, tmp_path_factory.mktemp("links"), ATTIMO_KEY_PREFIX="seclinks")
    yield server
    stop_api(server)


def legacy_link(kind: str, fields: dict[str, str], base: str = "http://attimo.test") -> str:
    """A link as the previous version signed it: fields joined with \\x1f."""
    order = {"click": ("m", "p", "e", "u"), "open": ("m", "p", "e"), "unsubscribe": ("p", "c")}[kind]
    parts = [fields[f] for f in order] + ([fields["j"]] if "j" in fields else [])
    signature = hmac.new(SECRET, "\x1f".join([kind, *parts]).encode(), hashlib.sha256).hexdigest()[:32]
    path = {"click": "v1/t/click", "open": "v1/t/open", "unsubscribe": "v1/unsubscribe"}[kind]
    return f"{base}/{path}?{urlencode({**fields, 's': signature})}"


def test_the_old_re_split_is_refused():
    """A trait put `\\x1f//evil.example` into a link target; the separator join
    let the boundary move so the target became //evil.example, signature intact."""
    signed = legacy_link("click", {"m": "m1", "p": "u-1", "e": "news",
                                   "u": "https://shop.example/?ref=A\x1f//evil.example"})
    moved = legacy_link("click", {"m": "m1", "p": "u-1", "e": "news\x1fhttps://shop.example/?ref=A",
                                  "u": "//evil.example"})
    tracker = Tracker(SECRET, "http://attimo.test")
    for link in (signed, moved):
        with pytest.raises(TrackingLinkInvalid):
            tracker.verify(link)


def test_a_legacy_link_without_control_characters_still_works():
    tracker = Tracker(SECRET, "http://attimo.test")
    link = legacy_link("click", {"m": "m1", "p": "u-1", "e": "news", "u": "https://shop.example/a"})
    assert tracker.verify(link)["u"] == "https://shop.example/a"


def test_a_signature_covers_every_field_so_no_boundary_moves():
    tracker = Tracker(SECRET, "http://attimo.test")
    link = tracker.click_url("m1", "u-1", "https://shop.example/?ref=A", "news", "welcome")
    assert tracker.verify(link)["j"] == "welcome"
    for tampered in (link.replace("e=news", "e=newswelcome").replace("j=welcome", "j="),
                     link.replace("&j=welcome", ""), link.replace("u=https", "u=http")):
        with pytest.raises(TrackingLinkInvalid):
            tracker.verify(tampered)


@pytest.mark.parametrize("target", ["//evil.example", "/relative", "javascript:alert(1)",
                                    "https://shop.example/\x1f"])
def test_only_absolute_http_targets_are_signed_or_followed(target):
    tracker = Tracker(SECRET, "http://attimo.test")
    with pytest.raises(Exception, match="absolute http"):
        tracker.click_url("m1", "u-1", target)
    forged = tracker._url("click", "v1/t/click", {"m": "m1", "p": "u-1", "e": "", "u": target})
    with pytest.raises(TrackingLinkInvalid):
        tracker.verify(forged)


def test_an_expired_click_link_is_410_and_redirects_nowhere(links_api):
    old = Tracker(SECRET, links_api.base_url, ttl_s=60, clock=lambda: time.time() - 3600)
    with links_api.client() as client:
        answer = client.get(old.click_url("m1", "u-late", "https://shop.example/"))
    assert answer.status_code == 410 and "location" not in answer.headers
    with pytest.raises(TrackingLinkExpired):
        Tracker(SECRET, links_api.base_url).verify(old.open_url("m1", "u-late"))


def test_a_mail_scanner_following_the_unsubscribe_link_unsubscribes_nobody(links_api):
    tracker = Tracker(SECRET, links_api.base_url)
    url = tracker.unsubscribe_url("u-scanned", "email")
    with links_api.client() as client:
        page = client.get(url)
        assert page.status_code == 200 and 'method="post"' in page.text
        with links_api.server() as server:
            assert server.get("/v1/kpis").json()["channels"]["email"]["unsubscribed"] == 0
        assert client.post(url, content="List-Unsubscribe=One-Click",
                           headers={"Content-Type": "application/x-www-form-urlencoded"}).json() == {
            "unsubscribed": "email", "cancelled": 0}
        with links_api.server() as server:
            assert server.get("/v1/kpis").json()["channels"]["email"]["unsubscribed"] == 1


def test_links_signed_with_the_previous_secret_verify_during_a_rotation():
    before = Tracker(SECRET, "http://attimo.test")
    after = Tracker(b"the-new-secret", "http://attimo.test", previous=SECRET)
    link = before.unsubscribe_url("u:u-1", "email")
    assert after.verify(link)["p"] == "u:u-1"
    assert after.verify(legacy_link("open", {"m": "m1", "p": "u-1", "e": "news"}))["m"] == "m1"
    with pytest.raises(TrackingLinkInvalid):
        Tracker(b"the-new-secret", "http://attimo.test").verify(link)
