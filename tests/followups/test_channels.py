"""Channels against real receivers: an aiosmtpd server reads the email we sent,
an HTTP receiver checks webhook signatures, retries and the dead letter."""

from __future__ import annotations

import re

import pytest

from engine.catalog.templates import TemplateRenderError, render
from engine.followups.channels.email import EmailChannel, SmtpConfig, Tracker, TrackingLinkInvalid
from engine.followups.channels.webhook import (
    DeliveryFailed,
    WebhookChannel,
    WebhookConfig,
    verify_signature,
)
from engine.followups.message import Message

SECRET = b"test-webhook-secret"
TRACKER = Tracker(secret=b"test-tracking-secret", public_url="https://attimo.example")


async def no_sleep(_seconds: float) -> None:
    return None


def welcome(person: str = "u-42") -> Message:
    return Message(id="welcome-u-42", person=person, channel="email", due_ms=0, template="welcome", body={
        "to": "ana@example.com", "subject": "Welcome, {{ name }}",
        "text": "Hello {{ name }}", "html": '<p>Hello {{ name }}</p><a href="https://shop.example/crm?a=1&b=2">CRM</a>'})


async def test_email_arrives_with_unsubscribe_and_tracking(smtp):
    channel = EmailChannel(SmtpConfig(host="127.0.0.1", port=smtp.port), TRACKER)
    await channel.send(welcome(), {"name": "Ana <script>"})
    [(recipients, email)] = smtp.messages
    assert recipients == ["ana@example.com"]
    assert email["Subject"] == "Welcome, Ana <script>"  # plain text: no escaping needed
    unsubscribe = email["List-Unsubscribe"].strip("<>")
    assert TRACKER.verify(unsubscribe) == {"kind": "unsubscribe", "p": "u-42", "c": "email"}
    html = email.get_body(("html",)).get_content()
    assert "Ana &lt;script&gt;" in html and "<script>" not in html
    links = [link.replace("&amp;", "&") for link in re.findall(r'href="([^"]+)"', html)]
    [click] = links
    assert TRACKER.verify(click) == {"kind": "click", "m": "welcome-u-42", "p": "u-42", "e": "welcome",
                                     "u": "https://shop.example/crm?a=1&b=2"}
    [pixel] = [s.replace("&amp;", "&") for s in re.findall(r'<img src="([^"]+)"', html)]
    assert TRACKER.verify(pixel)["kind"] == "open"


async def test_email_connections_are_kept_open_and_replaced_when_dropped(smtp):
    channel = EmailChannel(SmtpConfig(host="127.0.0.1", port=smtp.port), TRACKER)
    try:
        for n in range(3):
            await channel.send(welcome(f"u-{n}"), {"name": "Ana"})
        assert len(smtp.messages) == 3 and len(set(smtp.inbox.peers)) == 1  # one connection for all three
        smtp.restart()  # the server drops the idle connection
        await channel.send(welcome("u-3"), {"name": "Ana"})
    finally:
        await channel.aclose()
    assert len(smtp.messages) == 4 and len(set(smtp.inbox.peers)) == 2


def test_a_tampered_click_url_is_rejected():
    url = TRACKER.click_url("m-1", "u-1", "https://shop.example/")
    with pytest.raises(TrackingLinkInvalid):
        TRACKER.verify(url.replace("shop.example", "evil.example"))
    with pytest.raises(TrackingLinkInvalid):
        TRACKER.verify(url.replace("p=u-1", "p=u-2"))
    with pytest.raises(TrackingLinkInvalid):
        TRACKER.verify("https://attimo.example/v1/t/click?u=https://evil.example/")


def test_templates_are_sandboxed():
    with pytest.raises(TemplateRenderError):
        render("{{ name.__class__.__mro__ }}", {"name": "x"})
    with pytest.raises(TemplateRenderError):
        render("{{ missing }}", {})


async def test_webhook_is_signed_and_carries_the_idempotency_key(receiver):
    channel = WebhookChannel(WebhookConfig({"push": receiver.url + "/push"}, SECRET))
    message = Message(id="push-1", person="u-1", channel="push", due_ms=0, template="cart")
    try:
        assert await channel.send(message, {"tokens": ["tok-1"], "text": "Your cart"}) == 1
    finally:
        await channel.aclose()
    [got] = receiver.received
    assert got.path == "/push" and got.headers["idempotency-key"] == "push-1"
    assert verify_signature(SECRET, got.headers["x-attimo-timestamp"], got.body, got.headers["x-attimo-signature"])
    assert not verify_signature(b"other", got.headers["x-attimo-timestamp"], got.body, got.headers["x-attimo-signature"])
    assert b'"tokens":["tok-1"]' in got.body


async def test_webhook_retries_with_backoff_then_succeeds(receiver):
    receiver.statuses = [503, 500]
    waits = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    channel = WebhookChannel(WebhookConfig({"sms": receiver.url}, SECRET, backoff_ms=100), sleep=record)
    try:
        attempts = await channel.send(Message(id="sms-1", person="u", channel="sms", due_ms=0), {})
    finally:
        await channel.aclose()
    assert attempts == 3 and waits == [0.1, 0.2]
    assert {r.headers["idempotency-key"] for r in receiver.received} == {"sms-1"}


async def test_webhook_dead_letters_after_n_failures_with_the_reason(receiver):
    receiver.statuses = [500] * 10
    channel = WebhookChannel(WebhookConfig({"operator": receiver.url}, SECRET, attempts=4), sleep=no_sleep)
    try:
        with pytest.raises(DeliveryFailed) as failure:
            await channel.send(Message(id="op-1", person="u", channel="operator", due_ms=0), {})
    finally:
        await channel.aclose()
    assert failure.value.reason == "HTTP 500" and failure.value.attempts == 4
    assert len(receiver.received) == 4


async def test_webhook_does_not_retry_a_permanent_refusal(receiver):
    receiver.statuses = [410]
    channel = WebhookChannel(WebhookConfig({"push": receiver.url}, SECRET), sleep=no_sleep)
    try:
        with pytest.raises(DeliveryFailed) as failure:
            await channel.send(Message(id="p-1", person="u", channel="push", due_ms=0), {})
    finally:
        await channel.aclose()
    assert failure.value.reason == "HTTP 410" and len(receiver.received) == 1


async def test_unreachable_webhook_is_dead_lettered():
    from engine.testing.processes import free_port
    channel = WebhookChannel(WebhookConfig({"push": f"http://127.0.0.1:{free_port()}"}, SECRET, attempts=2),
                             sleep=no_sleep)
    try:
        with pytest.raises(DeliveryFailed) as failure:
            await channel.send(Message(id="p-2", person="u", channel="push", due_ms=0), {})
    finally:
        await channel.aclose()
    assert "ClientConnectorError" in failure.value.reason and "Connect call failed" in failure.value.reason
