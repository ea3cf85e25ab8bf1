"""The scheduler's senders, one per channel, built from the settings: email over
SMTP (links signed with the tracking secret) and a webhook per configured
channel (push carries the person's registered devices)."""

from __future__ import annotations

import logging

from engine.errors import PermanentSendError
from engine.followups.channels.email import EmailChannel, SmtpConfig, tracker_from_settings
from engine.followups.channels.webhook import DeliveryFailed, WebhookChannel, WebhookConfig
from engine.followups.inbox import DeviceStore
from engine.followups.message import Message
from engine.followups.scheduler import Sender
from engine.settings import Settings
from engine.store.keys import Keys

log = logging.getLogger("attimo.scheduler")


def senders_from_settings(settings: Settings, redis=None, keys: Keys | None = None
                          ) -> tuple[dict[str, Sender], list]:
    """Channel senders built from settings, and the resources to close after.
    With `redis`, push messages carry the person's registered device tokens."""
    email = None
    tracker = tracker_from_settings(settings)
    if tracker is not None:
        email = EmailChannel(
            SmtpConfig(host=settings.smtp_host, port=settings.smtp_port, tls=settings.smtp_tls,
                       username=settings.smtp_username, password=settings.smtp_password,
                       sender=settings.smtp_from), tracker)
    else:
        log.warning("no ATTIMO_TRACKING_SECRET or ATTIMO_SITE_SECRET: emails are dead-lettered, "
                    "their unsubscribe and tracking links could not be signed")
    urls = dict(settings.webhook_urls)
    webhooks = WebhookChannel(WebhookConfig(urls, (settings.webhook_secret or "").encode(),
                                            attempts=settings.webhook_attempts,
                                            backoff_ms=settings.webhook_backoff_ms))

    devices = DeviceStore(redis, keys) if redis is not None else None

    async def send_webhook(message: Message, values: dict) -> None:
        payload = {k: v for k, v in message.body.items() if k != "values"}
        if message.channel == "push" and devices is not None and "tokens" not in payload:
            # The push gateway gets the person's devices as registered now (an
            # empty list when none: it may know the person by other means).
            payload["tokens"] = await devices.tokens(message.person)
        try:
            await webhooks.send(message, payload)
        except DeliveryFailed as exc:  # the channel already retried: dead-letter now
            raise PermanentSendError(str(exc)) from exc

    async def unsigned_email(message: Message, values: dict) -> None:
        raise PermanentSendError("email links cannot be signed: set ATTIMO_TRACKING_SECRET or ATTIMO_SITE_SECRET")

    senders: dict[str, Sender] = {"email": email.send if email is not None else unsigned_email}
    for channel in urls:
        senders[channel] = send_webhook
    return senders, [webhooks, *([email] if email is not None else [])]
