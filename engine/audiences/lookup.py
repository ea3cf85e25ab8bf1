"""Finding people by email or phone: the index entry of an address (the kind and
the SHA-256 of its normal form, engine/audiences/identifiers.py), kept in step
with the people's traits after each batch, and checked against their profile
on every lookup, so a changed address no longer finds its old owner."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from engine.audiences.identifiers import EMAIL_TRAIT, PHONE_TRAIT, hashed_email, hashed_phone
from engine.events import Event
from engine.profile import decode_profile
from engine.store.cards import EMAIL, PHONE, Cards, parse
from engine.store.client import run_scripts
from engine.store.people_index import PeopleIndex

KINDS = {EMAIL_TRAIT: "e", PHONE_TRAIT: "p"}  # the trait an entry comes from, and its kind letter


def entry_of(trait: str, text: object, region: str | None = None) -> str | None:
    """`email`, " Ada@Example.com" → "e:<sha256 of ada@example.com>"; None when
    the text is not an address of that kind."""
    digest = hashed_email(text) if trait == EMAIL_TRAIT else hashed_phone(text, region)
    return f"{KINDS[trait]}:{digest}" if digest else None


def entries_of(traits: dict, region: str | None = None) -> set[str]:
    """The entries a person with these traits is found by."""
    found = (entry_of(trait, traits.get(trait), region) for trait in KINDS)
    return {entry for entry in found if entry}


def touches_index(event: Event) -> bool:
    """An event that sets or removes an email or phone trait."""
    return bool(event.traits) and not KINDS.keys().isdisjoint(event.traits)


class PeopleLookup:
    """The index (engine/store/people_index.py) read and written against the
    profiles it points to; `region` is ATTIMO_PHONE_REGION."""

    def __init__(self, index: PeopleIndex, region: str | None = None, cards: Cards | None = None):
        self.index = index
        self.redis = index.redis
        self.keys = index.keys
        self.region = region
        self.cards = cards or Cards(index.redis, index.keys)

    async def after_apply(self, events: Iterable[Event], profiles: Mapping | None = None,
                          changed_since: Collection[str] = ()) -> None:
        """After a batch: the people whose email or phone an event set or removed
        get the entries their profile now holds and lose the others. Read from
        the profile, not the events, so the last write wins whatever the order
        of batches; a duplicate batch writes what a crash may have left out.
        `profiles`: the profiles as the batch left them (not read again), but
        for the people in `changed_since` (merged after)."""
        people = sorted({event.person for event in events if touches_index(event)})
        if people:
            profiles = profiles or {}
            await self.sync(people, {person: profiles[person].t for person in people
                                     if person in profiles and person not in changed_since})

    async def sync(self, people: list[str], known: dict[str, dict] | None = None) -> None:
        """Each person's card takes the hashes their profile holds now (the card
        first: it is their list of entries), then the index: every wanted entry
        written again (a crash between the two is mended by the next write), the
        ones the card held before and no longer does removed."""
        known = known or {}
        unknown = [person for person in people if person not in known]
        traits = {**known, **(await self._traits(unknown) if unknown else {})}
        calls, wanted = [], {}
        for person in people:
            email = hashed_email(traits[person].get(EMAIL_TRAIT))
            phone = hashed_phone(traits[person].get(PHONE_TRAIT), self.region)
            calls.append(self.cards.swap_call(person, {EMAIL: email or "", PHONE: phone or ""}))
            wanted[person] = {f"e:{email}"} if email else set()
            if phone:
                wanted[person].add(f"p:{phone}")
        before = {person: parse(old).entries() for person, old in zip(people, await run_scripts(self.redis, calls),
                                                                         strict=True)}
        await self.index.add(wanted)
        await self.index.remove({p: before[p] - wanted[p] for p in people})

    async def find(self, trait: str, text: str) -> list[str] | None:
        """The people whose `trait` is this address now, or None when the text is
        not one. An entry whose person's profile says otherwise (a changed
        address, an expired profile) is removed on the way."""
        entry = entry_of(trait, text, self.region)
        if entry is None:
            return None
        candidates = await self.index.find(entry)
        if not candidates:
            return []
        traits = await self._traits(candidates)
        found = [p for p in candidates if entry in entries_of(traits[p], self.region)]
        stale = {p: [entry] for p in candidates if p not in found}
        await self.index.remove(stale)
        return sorted(found)

    async def _traits(self, people: list[str]) -> dict[str, dict]:
        pipe = self.redis.pipeline(transaction=False)
        for person in people:
            pipe.get(self.keys.profile(person))
        raws = await pipe.execute()
        return {person: decode_profile(raw).t for person, raw in zip(people, raws, strict=True)}
