"""Email over SMTP (aiosmtplib): renders a message's templates, rewrites its links
into signed click-tracking links, adds an open pixel and a List-Unsubscribe
header. The click redirect only goes to URLs signed here: never an open redirect."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import parse_qs, urlencode, urlsplit

import aiosmtplib

from engine.catalog.templates import TemplateRenderError, render
from engine.errors import AttimoError, PermanentSendError, SendError
from engine.followups.kpis import message_journey
from engine.followups.message import Message


class TrackingLinkInvalid(AttimoError):
    """A tracking or unsubscribe URL whose signature does not match: tampered."""


class EmailInvalid(AttimoError):
    """A message that cannot become an email: no recipient, a template that does
    not render, a header a value would split. The same every time: not retried."""


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str = "127.0.0.1"
    port: int = 25
    tls: str = "none"  # "none", "starttls" or "implicit"
    username: str | None = None
    password: str | None = None
    sender: str = "Attimo <noreply@localhost>"
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Tracker:
    """Signs and checks the links in an email. `public_url` is where the API
    answers /v1/t/open, /v1/t/click and /v1/unsubscribe."""

    secret: bytes
    public_url: str

    def _sig(self, *parts: str) -> str:
        return hmac.new(self.secret, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()[:32]

    # `e` names the email (its template), so a catalog rule can say "opened email E";
    # `j`, when the email belongs to a journey, lets opens and clicks count for it.
    def click_url(self, message_id: str, person: str, target: str, email: str = "", journey: str = "") -> str:
        query = {"m": message_id, "p": person, "e": email, "u": target, **({"j": journey} if journey else {})}
        query["s"] = self._sig("click", message_id, person, email, target, *((journey,) if journey else ()))
        return f"{self.public_url}/v1/t/click?{urlencode(query)}"

    def open_url(self, message_id: str, person: str, email: str = "", journey: str = "") -> str:
        query = {"m": message_id, "p": person, "e": email, **({"j": journey} if journey else {})}
        query["s"] = self._sig("open", message_id, person, email, *((journey,) if journey else ()))
        return f"{self.public_url}/v1/t/open?{urlencode(query)}"

    def unsubscribe_url(self, person: str, channel: str) -> str:
        query = {"p": person, "c": channel, "s": self._sig("unsubscribe", person, channel)}
        return f"{self.public_url}/v1/unsubscribe?{urlencode(query)}"

    def verify(self, url: str) -> dict[str, str]:
        """The fields of a tracking URL made here; TrackingLinkInvalid if tampered."""
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items() if len(v) == 1}
        kind = parts.path.rsplit("/", 1)[-1]
        fields = {"click": ("m", "p", "e", "u"), "open": ("m", "p", "e"), "unsubscribe": ("p", "c")}.get(kind)
        if fields is None or any(f not in query for f in (*fields, "s")):
            raise TrackingLinkInvalid(f"not a tracking URL: {parts.path}")
        if kind != "unsubscribe" and "j" in query:
            fields = (*fields, "j")
        expected = self._sig(kind, *(query[f] for f in fields))
        if not hmac.compare_digest(expected.encode(), query["s"].encode()):
            raise TrackingLinkInvalid("signature does not match: the link was changed")
        return {"kind": kind, **{f: query[f] for f in fields}}


def tracker_from_settings(settings) -> Tracker | None:
    """The link signer for these settings, or None when no secret is set (links
    signed with an empty key would be forgeable)."""
    secret = settings.tracking_secret or settings.site_secret
    return Tracker(secret=secret.encode(), public_url=settings.public_url.rstrip("/")) if secret else None


_HREF = re.compile(r'href="(https?://[^"]+)"', re.IGNORECASE)


def _render(body: dict, part: str, values: dict, *, html: bool = False) -> str:
    try:
        return render(body.get(part, ""), values, html=html)
    except TemplateRenderError as exc:
        raise EmailInvalid(f"{part} {exc}") from None


def _set_header(email: EmailMessage, name: str, value: str) -> None:
    """A line break would end the header and start another (Bcc: …): refused,
    never cleaned up, so the email goes out as written or not at all."""
    if "\r" in value or "\n" in value:
        raise EmailInvalid(f"{name} header contains a line break: {value!r}")
    try:
        email[name] = value
    except ValueError as exc:  # the email package's own checks
        raise EmailInvalid(f"{name} header: {exc}") from None


def build_email(message: Message, values: dict, tracker: Tracker, sender: str) -> EmailMessage:
    """The MIME message for one send. message.body holds `to`, `subject`, `text`
    and optionally `html` templates; `values` are the profile/offer fields.
    EmailInvalid says why a message cannot become an email."""
    body = message.body
    if not isinstance(body.get("to"), str) or not body["to"].strip():
        raise EmailInvalid("no recipient: the message has no 'to' address")
    if not isinstance(body.get("subject"), str):
        raise EmailInvalid("no subject template")
    html_source = body.get("html")
    journey = message_journey(body) or ""
    email = EmailMessage()
    _set_header(email, "From", sender)
    _set_header(email, "To", body["to"])
    _set_header(email, "Subject", _render(body, "subject", values))
    email["Message-ID"] = make_msgid(domain="attimo")
    _set_header(email, "X-Attimo-Message-Id", message.id)
    unsubscribe = tracker.unsubscribe_url(message.person, message.channel)
    email["List-Unsubscribe"] = f"<{unsubscribe}>"
    email["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    email.set_content(_render(body, "text", values) + f"\n\nUnsubscribe: {unsubscribe}\n")
    if html_source:
        html = _render(body, "html", values, html=True)

        def track(match: re.Match) -> str:
            # Jinja escaped & as &amp; inside attributes; sign the URL the reader meant.
            target = match.group(1).replace("&amp;", "&")
            signed = tracker.click_url(message.id, message.person, target, message.template, journey)
            return f'href="{signed.replace("&", "&amp;")}"'

        html = _HREF.sub(track, html)
        pixel = tracker.open_url(message.id, message.person, message.template, journey).replace("&", "&amp;")
        html += f'<img src="{pixel}" width="1" height="1" alt="" style="display:none">'
        email.add_alternative(html, subtype="html")
    return email


def _smtp_reason(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"SMTP {exc.code} {exc.message}".strip()


class EmailChannel:
    """Sends over a few SMTP connections kept open between messages: a new
    connection per email costs the greeting, EHLO (and TLS, login) before the
    first byte of the message. A connection idle longer than `idle_s`, or one the
    server dropped, is replaced; a send that fails on a reused connection is
    tried once more on a fresh one."""

    def __init__(self, config: SmtpConfig, tracker: Tracker, *, connections: int = 4, idle_s: float = 30.0):
        self.config = config
        self.tracker = tracker
        self.idle_s = idle_s
        self._slots = asyncio.Semaphore(connections)
        self._idle: list[tuple[float, aiosmtplib.SMTP]] = []  # (last used, connection)

    async def _connect(self) -> aiosmtplib.SMTP:
        c = self.config
        client = aiosmtplib.SMTP(hostname=c.host, port=c.port, username=c.username, password=c.password,
                                 use_tls=c.tls == "implicit", start_tls=c.tls == "starttls",
                                 timeout=c.timeout_s)
        await client.connect()
        return client

    def _reusable(self) -> aiosmtplib.SMTP | None:
        while self._idle:
            used_at, client = self._idle.pop()
            if client.is_connected and time.monotonic() - used_at < self.idle_s:
                return client
            client.close()
        return None

    async def send(self, message: Message, values: dict) -> None:
        """Send one email. A relay's 5xx answer (the address does not exist, the
        message is refused) and a message that cannot become an email raise
        PermanentSendError: dead-lettered at once. A 4xx answer (greylisting, a
        full queue) raises SendError, and a lost connection or a timeout its own
        error: retried through the queue."""
        try:
            email = build_email(message, values, self.tracker, self.config.sender)
        except EmailInvalid as exc:
            raise PermanentSendError(str(exc)) from exc
        try:
            await self._deliver(email)
        except aiosmtplib.SMTPRecipientsRefused as exc:  # every recipient refused, each with its answer
            refusals = exc.recipients or [aiosmtplib.SMTPRecipientRefused(450, "recipients refused", "")]
            reason = "; ".join(_smtp_reason(r) for r in refusals)
            if all(r.code >= 500 for r in refusals):
                raise PermanentSendError(reason) from exc
            raise SendError(reason) from exc
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code >= 500:
                raise PermanentSendError(_smtp_reason(exc)) from exc
            raise SendError(_smtp_reason(exc)) from exc

    async def _deliver(self, email: EmailMessage) -> None:
        async with self._slots:
            client = self._reusable()
            try:
                if client is not None:
                    try:
                        await client.send_message(email)
                    except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                        client.close()  # dropped while idle: once more on a fresh connection
                        client = None
                if client is None:
                    client = await self._connect()
                    await client.send_message(email)
            except BaseException:
                if client is not None:
                    client.close()
                raise
            self._idle.append((time.monotonic(), client))

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for _, client in idle:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()
