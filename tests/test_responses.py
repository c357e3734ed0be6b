"""The time format every dialect shows, and the JSON answer's headers."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given, strategies as st

from tidehub.api.responses import JSONResponse, iso


def by_datetime(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False)
       | st.integers(0, 4 * 10**9).flatmap(lambda s: st.sampled_from(
           [s, s + 0.0005, s + 0.0009995, s + 0.9995, s + 0.9999995, s + 0.0000005, s + 0.5])))
def test_iso_is_what_datetime_would_write(ts: float) -> None:
    assert iso(ts) == by_datetime(ts)


def test_iso_examples() -> None:
    assert iso(None) is None
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1764694445.1239) == "2025-12-02T16:54:05.123Z"
    assert iso(1764694445.9999996) == "2025-12-02T16:54:06.000Z"  # rounds to the microsecond, then carries


def test_json_answers_carry_length_and_type_and_the_headers_given() -> None:
    plain = JSONResponse({"a": 1})
    assert plain.body == b'{"a":1}'
    assert plain.raw_headers == [(b"content-length", b"7"), (b"content-type", b"application/json")]
    limited = JSONResponse({"a": 1}, status_code=429, headers={"Retry-After": "3"})
    assert sorted(limited.raw_headers) == [(b"content-length", b"7"), (b"content-type", b"application/json"),
                                           (b"retry-after", b"3")]
