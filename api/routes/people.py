"""A person as the engine sees them, everything held about them (their export),
finding people by email or phone, and erasing one (server token)."""

from __future__ import annotations

from redis.exceptions import RedisError
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.http import caller_of, json_response, services_of
from engine.audiences.identifiers import EMAIL_TRAIT, PHONE_TRAIT
from engine.clock import now_ms
from engine.decisions.person_view import journeys_view, person_view
from engine.errors import EventRejected, NotAuthorized, StoreUnavailable
from engine.followups.erase import erase_person
from engine.followups.export import export_document, read_held
from engine.ingest.identity import ADMIN, READ, person_of_path, require
from engine.policy import PERSONAL_CHANNELS, suppression_address


async def get_person(request: Request) -> Response:
    """
    summary: A person's profile as the engine sees it now (server token).
    security: [{serverToken: []}]
    parameters:
      - {name: person, in: path, required: true, schema: {type: string}, description: 'the person: u:<user id>, a:<anonymous id>, or a bare user id'}
    responses:
      200: {description: 'traits, windowed features, score, segments, impressions, messages: pending (queued or sending) and recent outcomes with their reasons, and journeys: in progress (step, waiting until) and last entries'}
      401: {description: Missing token}
      403: {description: Not a token with the read scope}
      422: {description: Not a person id}
    """
    services = services_of(request)
    require(caller_of(request), READ)
    person = person_of_path(request.path_params["person"])
    try:
        profile = await services.store.fetch(person)
        pending = await services.queue.pending_for(person, sorted(PERSONAL_CHANNELS))
        recent = await services.contacts.outcomes(person)
        journeys = await services.pipeline.journeys.state(person)
    except RedisError as exc:
        raise StoreUnavailable("the profile store is unavailable") from exc
    view = person_view(services.holder.current, person, profile, now_ms())
    view["messages"] = {"pending": pending, "recent": recent}
    view["journeys"] = journeys_view(journeys)
    return json_response(view)


async def export_person(request: Request) -> Response:
    """
    summary: Everything Attimo holds about a person, as one JSON document (server token).
    description: 'Profile (traits, windowed features and the counters as stored, score, segments, first and
      last seen), consent per channel and purpose with the last 50 changes, devices, inbox, messages
      (pending in the due queue with their bodies, recent outcomes, dead letters), journeys, experiment
      arms and hold-out groups, offers seen, discount codes kept for them, the anonymous ids merged into
      them and whether the suppression list names them or their addresses. The shape: docs/api.md.'
    security: [{serverToken: []}]
    parameters:
      - {name: person, in: path, required: true, schema: {type: string}, description: 'the person: u:<user id>, a:<anonymous id>, or a bare user id'}
    responses:
      200: {description: 'the export: {"person", "exported_at", "merged_ids", "profile", "consent", "devices", "inbox", "messages", "journeys", "experiments", "holdouts", "verified_impressions", "recent_purchases", "offers_seen", "discount_codes", "suppression", "kept_for_bookkeeping"}'}
      401: {description: Missing token}
      403: {description: Not a token with the read or the admin scope}
      404: {description: Attimo holds nothing about this person}
      422: {description: Not a person id}
    """
    services = services_of(request)
    caller = caller_of(request)
    if not (caller.may(READ) or caller.may(ADMIN)):
        raise NotAuthorized("this endpoint needs a server token with the read or the admin scope")
    person = person_of_path(request.path_params["person"])
    catalog = services.holder.current
    try:
        held = await read_held(services.redis, services.keys, services.queue, person,
                               services.queued_channels(), list(catalog.code_pools))
    except RedisError as exc:
        raise StoreUnavailable("the profile store is unavailable") from exc
    if held.is_empty():
        return json_response({"error": f"Attimo holds nothing about {person}"}, 404)
    return json_response(export_document(catalog, held, now_ms()))


async def delete_person(request: Request) -> Response:
    """
    summary: Erase a person (server token).
    description: 'Cancels every message queued for them on every channel (journey timers too), then removes
      their profile, event ids, contact state (consent, time zone, outcomes), journeys, inbox, devices,
      entries in the email and phone lookup index and dead letters. Their suppressions stay: they keep them from being contacted again. With
      `?suppress=true` their email address and phone number (their traits) are suppressed first, so a
      later import or sign-up of the same address is never contacted either.'
    security: [{serverToken: []}]
    parameters:
      - {name: person, in: path, required: true, schema: {type: string}, description: 'the person: u:<user id>, a:<anonymous id>, or a bare user id'}
      - {name: suppress, in: query, schema: {type: string, enum: ['true', 'false']}, description: 'suppress their addresses before erasing'}
    responses:
      200: {description: '{"erased": keys removed, "cancelled": queued messages cancelled, "dead_letters": removed, "codes": discount codes no longer kept for them, "suppressed": channels whose address was suppressed}'}
      401: {description: Missing token}
      403: {description: Not a token with the admin scope}
      422: {description: Not a person id}
    """

    services = services_of(request)
    require(caller_of(request), ADMIN)
    suppress = request.query_params.get("suppress", "false")
    if suppress not in ("true", "false"):
        raise EventRejected("suppress: true or false", "suppress")
    person = person_of_path(request.path_params["person"])
    try:
        suppressed = await _suppress_addresses(services, person) if suppress == "true" else []
        # Out of every tracked segment first, while their hashed addresses can
        # still go with the removal to each destination.
        merged = await services.redis.smembers(services.keys.merged(person))
        for someone in [person, *(m.decode() for m in merged)]:
            await services.runtime.pipeline.membership.erase(someone,
                                                             sorted(services.holder.current.audiences.tracked))
        erased = await erase_person(services.redis, services.keys, services.queue,
                                    person, services.queued_channels(),
                                    services.codes, list(services.holder.current.code_pools),
                                    services.lookup.index)
    except RedisError as exc:
        raise StoreUnavailable("the profile store is unavailable") from exc
    return json_response({"erased": erased["keys"], "cancelled": erased["cancelled"],
                          "dead_letters": erased["dead_letters"], "codes": erased["codes"], "suppressed": suppressed})


async def _suppress_addresses(services, person: str) -> list[str]:
    """Suppress the person's email address and phone number, as their traits
    hold them; the channels whose address was suppressed."""
    traits = (await services.store.fetch(person)).t
    done = []
    for channel, trait in (("email", "email"), ("sms", "phone")):
        raw = traits.get(trait)
        address = suppression_address(channel, raw) if isinstance(raw, str) else None
        if address is not None:
            await services.contacts.suppress_address(channel, address)
            done.append(channel)
    return done


async def find_people(request: Request) -> Response:
    """
    summary: The people an email address or a phone number names (server token, read or admin scope).
    description: 'Give exactly one of `email` or `phone`. The address is compared in its normal form (an email
      trimmed and in lower case, a phone in E.164; a number without its +country code is read in
      ATTIMO_PHONE_REGION), through an index of SHA-256 digests kept as `email` and `phone` traits are set by
      events and imports. Each person found still has that address in their profile: one whose address
      changed is not returned for the old one. At most 100 people.'
    security: [{serverToken: []}]
    parameters:
      - {name: email, in: query, schema: {type: string}, description: 'an email address'}
      - {name: phone, in: query, schema: {type: string}, description: 'a phone number'}
    responses:
      200: {description: '{"people": ["u:<user id>", …]}, sorted; empty when nobody has the address'}
      401: {description: Missing token}
      403: {description: Not a token with the read or admin scope}
      422: {description: 'Neither or both of email and phone, or not an address of its kind: {"error", "field"}'}
    """
    services = services_of(request)
    caller = caller_of(request)
    if not caller.may(ADMIN):
        require(caller, READ)
    given = [(trait, request.query_params[trait]) for trait in (EMAIL_TRAIT, PHONE_TRAIT)
             if trait in request.query_params]
    if len(given) != 1:
        raise EventRejected("give exactly one of email or phone", "email")
    trait, text = given[0]
    try:
        people = await services.lookup.find(trait, text)
    except RedisError as exc:
        raise StoreUnavailable("the profile store is unavailable") from exc
    if people is None:
        reason = ("not an email address" if trait == EMAIL_TRAIT else
                  "not a phone number (write it with its +country code, or set ATTIMO_PHONE_REGION)")
        raise EventRejected(reason, trait)
    return json_response({"people": people})


class Person(HTTPEndpoint):
    """One route for the path, so a method it lacks is a 405 whose Allow header
    names both GET and DELETE (two routes would each name only their own)."""

    get = staticmethod(get_person)
    delete = staticmethod(delete_person)


ROUTES = [
    Route("/v1/people", find_people, methods=["GET"]),
    Route("/v1/people/{person}", Person),
    Route("/v1/people/{person}/export", export_person, methods=["GET"]),
]
