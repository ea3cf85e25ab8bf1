"""Bucketed windows: durations, resolutions and the exact edges of a window."""

import pytest

from engine.catalog import windows
from engine.catalog.windows import DAY_MS, HOUR_MS, MINUTE_MS

NOW = 1_764_000_000_000  # 2025-11-24T16:00:00Z


def test_durations_parse_in_every_unit():
    assert windows.parse_duration("30m") == 30 * MINUTE_MS
    assert windows.parse_duration("12h") == 12 * HOUR_MS
    assert windows.parse_duration("7d") == 7 * DAY_MS
    assert windows.parse_duration("2w") == 14 * DAY_MS
    assert windows.parse_duration("45s") == 45_000


@pytest.mark.parametrize("bad", ["7", "7 days", "-3d", "0d", "", 7, True, None])
def test_bad_durations_are_refused_with_the_format(bad):
    with pytest.raises(ValueError, match="duration"):
        windows.parse_duration(bad)


def test_resolution_grows_with_the_window_so_rings_stay_short():
    assert windows.resolution_for(30 * MINUTE_MS) == MINUTE_MS
    assert windows.resolution_for(2 * HOUR_MS) == MINUTE_MS
    assert windows.resolution_for(3 * HOUR_MS) == HOUR_MS
    assert windows.resolution_for(4 * DAY_MS) == HOUR_MS
    assert windows.resolution_for(90 * DAY_MS) == DAY_MS
    for window in (30 * MINUTE_MS, 3 * DAY_MS, 366 * DAY_MS):
        assert windows.buckets_for(window, windows.resolution_for(window)) <= 366


def test_window_total_counts_the_current_bucket_and_the_ones_before_it():
    today = NOW // DAY_MS
    ring = [today, 1, 2, 0, 4, 0, 0, 0, 8]  # 8 sits in bucket today - 7
    assert windows.window_total(ring, NOW, DAY_MS, 7) == 7  # today … today-6
    assert windows.window_total(ring, NOW, DAY_MS, 8) == 15  # today-7 is inside 8d
    assert windows.window_total(ring, NOW, DAY_MS, 1) == 1


def test_window_total_of_a_ring_last_written_long_ago_is_zero():
    old = NOW // DAY_MS - 30
    assert windows.window_total([old, 5, 5], NOW, DAY_MS, 7) == 0
    assert windows.window_total([old, 5, 5], NOW, DAY_MS, 31) == 5  # old-1 is outside
    assert windows.window_total([old, 5, 5], NOW, DAY_MS, 32) == 10
    assert windows.window_total(None, NOW, DAY_MS, 7) == 0


def test_feature_ids_are_stable_and_distinct():
    a = windows.feature_id("page_view", {"category": "crm"}, None, DAY_MS)
    assert a == windows.feature_id("page_view", {"category": "crm"}, None, DAY_MS)
    assert a != windows.feature_id("page_view", {"category": "crm"}, None, HOUR_MS)
    assert a != windows.feature_id("page_view", {"category": "crm"}, "seconds", DAY_MS)
    assert a != windows.feature_id("page_view", {"category": "erp"}, None, DAY_MS)


def test_an_event_counts_for_exactly_the_features_whose_filters_it_passes():
    from engine.catalog.compile import compile_catalog, parse_catalog_text

    catalog = compile_catalog(parse_catalog_text("""
rules:
  crm: {event: page_view, where: {category: crm}, within: 7d, count: {at_least: 1}}
  level_one: {event: page_view, where: {level: 1}, within: 7d, count: {at_least: 1}}
  long_video: {event: page_view, where: {seconds: {above: 30}}, within: 7d, count: {at_least: 1}}
  watch_time: {event: page_view, within: 1d, sum: {of: seconds, above: 0}}
  anything_crm: {event: "*", where: {category: crm}, within: 1d, count: {at_least: 1}}
"""))
    features = {feature.fid: feature for feature, _ in catalog.window_uses.values()}
    assert len(features) == 5

    def counted(event_type, properties):
        return sorted((features[f.fid].sum_of or "count", amount) for f, amount in catalog.counted(event_type, properties))

    # 1.0 equals 1, every filter passes, the "*" feature counts too, the sum adds 40.
    assert counted("page_view", {"category": "crm", "level": 1.0, "seconds": 40}) == [
        ("count", 1), ("count", 1), ("count", 1), ("count", 1), ("seconds", 40)]
    # True is not 1, analytics is not crm, no seconds: nothing counts.
    assert counted("page_view", {"category": "analytics", "level": True}) == []
    assert counted("email_open", {"category": "crm"}) == [("count", 1)]
