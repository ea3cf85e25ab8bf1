"""Each condition kind, compiled from catalog YAML and evaluated on a profile."""

import pytest

from engine.catalog.compile import compile_catalog
from engine.catalog.rules import Facts
from engine.catalog.windows import DAY_MS, MINUTE_MS
from engine.errors import CatalogError
from engine.profile import Profile

NOW = 1_764_000_000_000


def holds(condition: dict, profile: Profile | None = None, context: dict | None = None, now=NOW, **extra):
    catalog = compile_catalog({"segments": [{"id": "s", "when": condition}], **extra})
    facts = Facts(catalog, profile or Profile(), context or {}, now)
    return catalog.segments["s"](facts)


def ring_profile(condition: dict, ring_values: list, newest_bucket: int, **fields) -> Profile:
    """A profile whose only ring is the one `condition` reads."""
    catalog = compile_catalog({"segments": [{"id": "s", "when": condition}]})
    (fid,) = catalog.features
    return Profile(w={fid: [newest_bucket, *ring_values]}, **fields)


@pytest.mark.parametrize(("comparison", "value", "expected"), [
    ({"equals": "IT"}, "IT", True),
    ({"equals": "IT"}, "FR", False),
    ({"equals": 30}, 30.0, True),
    ({"equals": True}, 1, False),  # a boolean is not a number
    ({"equals": True}, True, True),
    ({"equals": False}, 0, False),
    ({"equals": 1}, True, False),
    ({"equals": "30"}, 30, False),  # nor is a string
    ({"equals": "IT"}, ["IT"], False),  # a list is not its element
    ({"in": ["gold", "platinum"]}, ["gold"], False),
    ({"in": ["1", "2"]}, 1, False),
    ({"in": [1, "gold"]}, 1.0, True),
    ({"in": ["gold", "platinum"]}, "gold", True),
    ({"in": ["gold", "platinum"]}, "silver", False),
    ({"not_in": ["gold"]}, "silver", True),
    ({"not_in": ["gold"]}, None, True),
    ({"between": [25, 34]}, 25, True),
    ({"between": [25, 34]}, 34, True),
    ({"between": [25, 34]}, 35, False),
    ({"between": [25, 34]}, "30", False),  # strings are not numbers
    ({"at_least": 18}, 18, True),
    ({"at_most": 18}, 19, False),
    ({"above": 100}, 100, False),
    ({"below": 100}, 99.5, True),
    ({"exists": True}, "x", True),
    ({"exists": True}, None, False),
    ({"exists": False}, None, True),
    ({"prefix": "/pricing"}, "/pricing/crm", True),
    ({"contains": "crm"}, ["erp", "crm"], True),
    ({"contains": "crm"}, ["erp"], False),
    ({"between": [25, 34], "in": [30, 31]}, 30, True),  # several comparisons: all must hold
    ({"between": [25, 34], "in": [30, 31]}, 32, False),
])
def test_trait_comparisons(comparison, value, expected):
    traits = {} if value is None else {"x": value}
    assert holds({"trait": "x", **comparison}, Profile(t=traits)) is expected


def test_missing_trait_fails_every_positive_comparison():
    for comparison in ({"equals": 1}, {"in": [1]}, {"between": [0, 9]}, {"at_least": 0}, {"prefix": ""}):
        assert holds({"trait": "x", **comparison}, Profile()) is False


def test_all_any_not_combine():
    young_it = Profile(t={"age": 30, "country": "IT"})
    cond = {"all": [{"trait": "age", "between": [25, 34]}, {"any": [
        {"trait": "country", "equals": "FR"}, {"not": {"trait": "country", "equals": "DE"}},
    ]}]}
    assert holds(cond, young_it) is True
    assert holds(cond, Profile(t={"age": 30, "country": "DE"})) is False
    assert holds(cond, Profile(t={"age": 40, "country": "IT"})) is False


def test_context_conditions_read_the_request():
    assert holds({"context": "device", "equals": "mobile"}, context={"device": "mobile"})
    assert not holds({"context": "device", "equals": "mobile"}, context={"device": "desktop"})
    assert holds({"context": "path", "prefix": "/pricing"}, context={"path": "/pricing/crm"})
    assert not holds({"context": "path", "prefix": "/pricing"}, context={})


def test_time_of_day_context_uses_the_person_time_zone():
    # NOW is 16:00 UTC, 17:00 in Rome.
    assert holds({"context": "hour", "equals": 16}, context={})
    assert holds({"context": "hour", "equals": 17}, context={"timezone": "Europe/Rome"})


def test_count_in_window_at_least():
    cond = {"event": "page_view", "where": {"category": "crm"}, "within": "7d", "count": {"at_least": 3}}
    today = NOW // DAY_MS
    assert holds(cond, ring_profile(cond, [1, 1, 1], today))
    assert not holds(cond, ring_profile(cond, [1, 1], today))
    # Three views, but the third one sits 7 days back: just outside a 7d window.
    assert not holds(cond, ring_profile(cond, [1, 1, 0, 0, 0, 0, 0, 1], today))
    assert holds(cond, ring_profile(cond, [1, 1, 0, 0, 0, 0, 1], today))


def test_sum_of_a_property_in_window():
    cond = {"event": "video_progress", "where": {"video": "demo"}, "within": "30d",
            "sum": {"of": "seconds", "above": 120}}
    today = NOW // DAY_MS
    assert holds(cond, ring_profile(cond, [60, 61], today))
    assert not holds(cond, ring_profile(cond, [60, 60], today))


def test_minute_windows_use_minute_buckets():
    cond = {"event": "add_to_cart", "within": "30m"}
    minute = NOW // MINUTE_MS
    assert holds(cond, ring_profile(cond, [0] * 29 + [1], minute))
    assert not holds(cond, ring_profile(cond, [0] * 30 + [1], minute))


def test_interaction_without_window_means_ever_in_the_last_year():
    cond = {"event": "email_open", "where": {"email": "welcome"}}
    today = NOW // DAY_MS
    assert holds(cond, ring_profile(cond, [1], today - 200))
    assert not holds(cond, Profile())


def test_no_activity_count_zero_and_inactive_for():
    assert holds({"inactive_for": "30d"}, Profile(ls=NOW - 31 * DAY_MS))
    assert not holds({"inactive_for": "30d"}, Profile(ls=NOW - 29 * DAY_MS))


def test_returning_after_holds_during_the_first_session_back():
    back_now = Profile(ls=NOW - 5 * MINUTE_MS, gap=40 * DAY_MS)
    assert holds({"returning_after": "30d"}, back_now)
    assert not holds({"returning_after": "30d"}, Profile(ls=NOW - 5 * MINUTE_MS, gap=3 * DAY_MS))
    # The session ended (idle for an hour): no longer "just came back".
    assert not holds({"returning_after": "30d"}, Profile(ls=NOW - 60 * MINUTE_MS, gap=40 * DAY_MS))


def test_score_condition_adds_trait_points_to_decayed_behaviour_points():
    scoring = {"half_life": "10d", "traits": [{"trait": "role", "equals": "cto", "points": 20}]}
    fresh = Profile(s=[40, NOW], t={"role": "cto"})
    halved = Profile(s=[40, NOW - 10 * DAY_MS], t={"role": "cto"})
    assert holds({"score": {"at_least": 60}}, fresh, scoring=scoring)
    assert not holds({"score": {"at_least": 60}}, halved, scoring=scoring)
    assert holds({"score": {"at_least": 40}}, halved, scoring=scoring)


def test_segment_and_named_rule_references():
    spec = {
        "rules": {"adult": {"trait": "age", "at_least": 18}},
        "segments": [
            {"id": "adults", "when": {"rule": "adult"}},
            {"id": "s", "when": {"segment": "adults"}},
        ],
    }
    catalog = compile_catalog(spec)
    assert catalog.segments["s"](Facts(catalog, Profile(t={"age": 20}), {}, NOW))
    assert not catalog.segments["s"](Facts(catalog, Profile(t={"age": 12}), {}, NOW))


@pytest.mark.parametrize(("condition", "fragment"), [
    ({"trait": "age", "aprox": 3}, "unknown comparison"),
    ({"trait": "age"}, "needs a comparison"),
    ({"trait": "age", "between": [5]}, "between takes [low, high]"),
    ({"event": "x", "within": "7 days"}, "duration"),
    ({"event": "x", "within": "400d"}, "at most 366d"),
    ({"event": "x", "sum": {"above": 3}}, "sum takes {of: property"),
    ({"segment": "nope"}, "no segment named"),
    ({"rule": "nope"}, "no rule named"),
    ({"all": []}, "non-empty list"),
    ({"trait": "a", "equals": 1, "context": "b"}, "exactly one of"),
    ({"python": "__import__('os')"}, "exactly one of"),
    ("age > 3", "a condition is a mapping"),
])
def test_bad_conditions_are_refused_with_path_and_reason(condition, fragment):
    with pytest.raises(CatalogError) as caught:
        compile_catalog({"segments": [{"id": "s", "when": condition}]})
    assert any(fragment in reason and path.startswith("segments[0].when") for path, reason in caught.value.problems), caught.value.problems


def test_a_rule_that_refers_to_itself_is_refused():
    with pytest.raises(CatalogError, match="refers to itself"):
        compile_catalog({"rules": {"a": {"rule": "b"}, "b": {"rule": "a"}}})
