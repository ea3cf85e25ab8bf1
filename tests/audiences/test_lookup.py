"""Finding people by email or phone against a real Redis (a single server and a
cluster): the index follows the traits events set, a changed address no longer
finds its old owner (and its entry goes), erasure leaves nothing, merges bring
the visitor's address along."""

from redis.crc import key_slot

from engine.audiences.identifiers import sha256_hex
from engine.audiences.lookup import PeopleLookup, entry_of
from engine.events import Event
from engine.followups.due_queue import DueQueue
from engine.followups.erase import erase_person
from engine.store.cards import Cards
from engine.store.keys import IX_SHARDS, Keys
from engine.store.people_index import PeopleIndex, shard_of
from tests.conftest import make_pipeline

NOW = 1_764_000_000_000
KEYS = Keys()


def identify(eid: str, person: str, ts: int = NOW, **traits) -> Event:
    return Event(eid, "identify", person, ts, {}, traits, trusted=True)


async def index_members(redis) -> list[str]:
    members = []
    for shard in range(IX_SHARDS):
        members += [m.decode() for m in await redis.zrange(KEYS.people_index(shard), 0, -1)]
    return sorted(members)


def test_an_entry_is_the_kind_and_the_sha256_of_the_normal_form():
    assert entry_of("email", "  Ada@Example.COM ") == "e:" + sha256_hex("ada@example.com")
    assert entry_of("phone", "+44 20 7946 0958") == "p:" + sha256_hex("+442079460958")
    assert entry_of("phone", "020 7946 0958") is None  # no region: whose number is it?
    assert entry_of("phone", "020 7946 0958", "GB") == "p:" + sha256_hex("+442079460958")
    assert entry_of("email", "not an address") is None


async def test_an_email_set_by_an_event_finds_its_person_in_any_case_and_spacing(redis):
    pipeline = make_pipeline(redis, "{}")
    await pipeline.apply([identify("e1", "u:ada", email="Ada@Example.com"),
                          identify("e2", "u:bob", email="bob@example.com")], NOW)
    assert await pipeline.lookup.find("email", "  ADA@example.COM ") == ["u:ada"]
    assert await pipeline.lookup.find("email", "bob@example.com") == ["u:bob"]
    assert await pipeline.lookup.find("email", "carl@example.com") == []
    assert await pipeline.lookup.find("email", "nope") is None
    entry = entry_of("email", "ada@example.com")
    assert (await Cards(redis, KEYS).read(["u:ada"]))[0].entries() == {entry}  # the person's list of entries
    # Sharded by the digest: the entry lives under {ix:N}, not in one global key.
    assert await redis.zrange(KEYS.people_index(shard_of(entry)), 0, -1) == [f"{entry}:u:ada".encode()]


async def test_a_changed_email_no_longer_finds_the_person_by_the_old_one(redis):
    pipeline = make_pipeline(redis, "{}")
    await pipeline.apply([identify("e1", "u:ada", email="old@example.com")], NOW)
    await pipeline.apply([identify("e2", "u:ada", NOW + 1, email="new@example.com")], NOW + 1)
    assert await pipeline.lookup.find("email", "old@example.com") == []
    assert await pipeline.lookup.find("email", "new@example.com") == ["u:ada"]
    assert await index_members(redis) == [f"{entry_of('email', 'new@example.com')}:u:ada"]
    await pipeline.apply([identify("e3", "u:ada", NOW + 2, email=None)], NOW + 2)  # removed
    assert await pipeline.lookup.find("email", "new@example.com") == []
    assert await index_members(redis) == []


async def test_a_stale_entry_is_not_returned_and_is_removed_when_read(redis):
    """An entry the write path could not correct (written by hand here, as a
    crash or an older version would leave it): the profile has the last word."""
    pipeline = make_pipeline(redis, "{}")
    await pipeline.apply([identify("e1", "u:ada", email="ada@example.com")], NOW)
    stale = entry_of("email", "ghost@example.com")
    await PeopleIndex(redis, KEYS).add({"u:ada": [stale], "u:gone": [stale]})
    assert await pipeline.lookup.find("email", "ghost@example.com") == []
    assert await redis.zrange(KEYS.people_index(shard_of(stale)), 0, -1) == []
    assert (await Cards(redis, KEYS).read(["u:ada"]))[0].entries() == {entry_of("email", "ada@example.com")}


async def test_two_people_with_one_address_are_both_found(redis):
    pipeline = make_pipeline(redis, "{}")
    await pipeline.apply([identify("e1", "u:ada", email="shop@example.com"),
                          identify("e2", "u:bob", email="Shop@Example.com")], NOW)
    assert await pipeline.lookup.find("email", "shop@example.com") == ["u:ada", "u:bob"]


async def test_a_phone_is_read_in_the_region_when_it_has_no_country_code(redis):
    pipeline = make_pipeline(redis, "{}")
    pipeline.lookup = PeopleLookup(PeopleIndex(redis, KEYS), "GB")
    await pipeline.apply([identify("e1", "u:ada", phone="020 7946 0958")], NOW)
    assert await pipeline.lookup.find("phone", "+44 20 7946 0958") == ["u:ada"]
    assert await pipeline.lookup.find("phone", "(020) 7946-0958") == ["u:ada"]
    assert await PeopleLookup(PeopleIndex(redis, KEYS)).find("phone", "020 7946 0958") is None


async def test_an_erased_person_is_not_found_and_leaves_no_entry(redis):
    pipeline = make_pipeline(redis, "{}")
    await pipeline.apply([identify("e1", "u:ada", email="ada@example.com", phone="+393331112222")], NOW)
    assert len(await index_members(redis)) == 2
    await erase_person(redis, KEYS, DueQueue(redis), "u:ada", [], index=pipeline.lookup.index)
    assert await index_members(redis) == []
    assert await redis.exists(KEYS.audience_card("u:ada")) == 0
    assert await pipeline.lookup.find("phone", "+39 333 111 2222") == []


async def test_a_visitors_address_follows_them_into_the_known_person(redis):
    pipeline = make_pipeline(redis, "{}")
    await pipeline.apply([identify("e1", "a:visitor", email="vis@example.com")], NOW)
    await pipeline.apply([Event("login", "page_view", "u:vis", NOW + 1, {}, None, merge_from="a:visitor")], NOW + 1)
    assert await pipeline.lookup.find("email", "vis@example.com") == ["u:vis"]


def test_the_index_spreads_over_its_shards_and_a_persons_list_sits_in_their_slot():
    shards = {shard_of(entry_of("email", f"person{i}@example.com")) for i in range(2000)}
    assert shards == set(range(IX_SHARDS))
    assert key_slot(KEYS.audience_card("u:ada").encode()) == key_slot(KEYS.profile("u:ada").encode())
