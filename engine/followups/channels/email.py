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
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import parse_qs, urlencode, urlsplit

import aiosmtplib
import orjson

from engine.catalog.templates import TemplateRenderError, render
from engine.errors import AddressRefused, AttimoError, PermanentSendError, SendError
from engine.followups.kpis import message_journey
from engine.followups.message import Message
from engine.policy import suppression_address
from engine.signing import EMAIL_LINKS, derived_key


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


# The fields of each kind of link, in the order they are signed; optional ones
# (the journey) are signed as "" when absent, so no field can be moved into another.
LINK_FIELDS = {"click": ("m", "p", "e", "u", "j"), "open": ("m", "p", "e", "j"), "unsubscribe": ("p", "c")}
REQUIRED_FIELDS = {"click": ("m", "p", "e", "u"), "open": ("m", "p", "e"), "unsubscribe": ("p", "c")}
SIGNATURE_VERSION = "2."
LINK_TTL_S = 90 * 86_400
# A relay's answers to RCPT TO that say the mailbox does not exist (RFC 5321,
# 3463): a hard bounce, suppressed. Other 5xx (a policy refusal, a full
# mailbox) dead-letter the message without judging the address.
HARD_BOUNCES = (550, 551, 553)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class TrackingLinkExpired(TrackingLinkInvalid):
    """A genuine open or click link past its expiry (ATTIMO_LINK_TTL_DAYS)."""


def is_redirect_target(url: str) -> bool:
    """An absolute http(s) URL with a host and no control characters: the only
    kind of target a click link is ever made for, or followed to."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not _CONTROL.search(url)


@dataclass(frozen=True, slots=True)
class Tracker:
    """Signs and checks the links in an email. `public_url` is where the API
    answers /v1/t/open, /v1/t/click and /v1/unsubscribe. A signature covers the
    JSON array of every field of its kind (the optional ones as ""), and the
    expiry of open and click links; unsubscribe links do not expire, so a person
    can always leave (all they can do is withdraw consent)."""

    secret: bytes
    public_url: str
    ttl_s: int = LINK_TTL_S
    clock: Callable[[], float] = time.time
    previous: bytes | None = None  # the secret being rotated out: its links still verify

    def _sig(self, kind: str, fields: dict[str, str], expires: str, secret: bytes | None = None) -> str:
        payload = orjson.dumps([kind, *(fields.get(f, "") for f in LINK_FIELDS[kind]), expires])
        key = derived_key(secret or self.secret, EMAIL_LINKS)
        return SIGNATURE_VERSION + hmac.new(key, payload, hashlib.sha256).hexdigest()[:32]

    def _secrets(self) -> tuple[bytes, ...]:
        return (self.secret, self.previous) if self.previous else (self.secret,)

    def _url(self, kind: str, path: str, fields: dict[str, str]) -> str:
        fields = {k: v for k, v in fields.items() if v}
        expires = "" if kind == "unsubscribe" else str(int(self.clock()) + self.ttl_s)
        query = {**fields, **({"x": expires} if expires else {}), "s": self._sig(kind, fields, expires)}
        return f"{self.public_url}/{path}?{urlencode(query)}"

    # `e` names the email (its template), so a catalog rule can say "opened email E";
    # `j`, when the email belongs to a journey, lets opens and clicks count for it.
    def click_url(self, message_id: str, person: str, target: str, email: str = "", journey: str = "") -> str:
        if not is_redirect_target(target):
            raise EmailInvalid(f"a link to {target[:80]!r}: only absolute http(s) links are tracked")
        return self._url("click", "v1/t/click", {"m": message_id, "p": person, "e": email, "u": target, "j": journey})

    def open_url(self, message_id: str, person: str, email: str = "", journey: str = "") -> str:
        return self._url("open", "v1/t/open", {"m": message_id, "p": person, "e": email, "j": journey})

    def unsubscribe_url(self, person: str, channel: str) -> str:
        return self._url("unsubscribe", "v1/unsubscribe", {"p": person, "c": channel})

    def verify(self, url: str) -> dict[str, str]:
        """The fields of a link made here; TrackingLinkInvalid if it was changed
        (or is not one), TrackingLinkExpired if it is past its expiry."""
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items() if len(v) == 1}
        kind = parts.path.rsplit("/", 1)[-1]
        if kind not in LINK_FIELDS or "s" not in query:
            raise TrackingLinkInvalid(f"not a tracking URL: {parts.path}")
        if any(_CONTROL.search(value) for value in query.values()):
            raise TrackingLinkInvalid("a link field holds control characters: the link was changed")
        # Empty fields are left out of a link; the signature covers them as "".
        fields = {f: query.get(f, "") for f in REQUIRED_FIELDS[kind]}
        if query.get("j"):
            fields["j"] = query["j"]
        if query["s"].startswith(SIGNATURE_VERSION):
            self._check(kind, fields, query)
        elif all(f in query for f in REQUIRED_FIELDS[kind]):
            self._check_legacy(kind, fields, query["s"])
        else:
            raise TrackingLinkInvalid(f"not a tracking URL: {parts.path}")
        if kind == "click" and not is_redirect_target(fields["u"]):
            raise TrackingLinkInvalid("the link's target is not an absolute http(s) URL")
        return {"kind": kind, **fields}

    def _check(self, kind: str, fields: dict[str, str], query: dict[str, str]) -> None:
        expires = query.get("x", "")
        if kind != "unsubscribe" and not (expires.isascii() and expires.isdigit()):
            raise TrackingLinkInvalid("the link has no expiry: it was changed")
        given = query["s"].encode()
        if not any(hmac.compare_digest(self._sig(kind, fields, expires, secret).encode(), given)
                   for secret in self._secrets()):
            raise TrackingLinkInvalid("signature does not match: the link was changed")
        if expires and int(expires) < self.clock():
            raise TrackingLinkExpired("this link has expired")

    def _check_legacy(self, kind: str, fields: dict[str, str], signature: str) -> None:
        """Links sent before signatures covered every field as JSON: fields were
        joined with a separator (no field holds one: control characters are
        refused above, so the join cannot be re-split); no expiry."""
        parts = [fields[f] for f in REQUIRED_FIELDS[kind]] + ([fields["j"]] if "j" in fields else [])
        message = "\x1f".join([kind, *parts]).encode()
        if not any(hmac.compare_digest(hmac.new(secret, message, hashlib.sha256).hexdigest()[:32].encode(),
                                       signature.encode()) for secret in self._secrets()):
            raise TrackingLinkInvalid("signature does not match: the link was changed")


def tracker_from_settings(settings) -> Tracker | None:
    """The link signer for these settings, or None when no secret is set (links
    signed with an empty key would be forgeable)."""
    secret = settings.tracking_secret or settings.site_secret
    if not secret:
        return None
    # Links signed with the site secret keep verifying while it is rotated out.
    previous = settings.site_secret_previous if not settings.tracking_secret else None
    return Tracker(secret=secret.encode(), public_url=settings.public_url.rstrip("/"),
                   ttl_s=settings.link_ttl_days * 86_400, previous=previous.encode() if previous else None)


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
            if not is_redirect_target(target):
                return match.group(0)  # not a link the click redirect would ever follow: left untracked
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
                address = suppression_address("email", str(email["To"]))
                if address is not None and any(r.code in HARD_BOUNCES for r in refusals):
                    raise AddressRefused(reason, "email", address) from exc
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
