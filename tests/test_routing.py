"""Router: longest prefix, raw path joining, and refusal of escaping paths."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import BadRequest, NoRoute
from proxy.proxying.router import Router, check_decoded, check_rest, join_upstream


@pytest.fixture
def router() -> Router[str]:
    return Router([("/api/", "api"), ("/api/v2/", "v2"), ("/invoiceng/", "inv")])


def test_longest_prefix_wins(router: Router[str]) -> None:
    assert router.match("/api/v2/items").route == "v2"
    assert router.match("/api/v1/items").route == "api"
    assert router.match("/api/v2/items").rest == "items"


def test_prefix_without_trailing_slash_matches_the_base(router: Router[str]) -> None:
    m = router.match("/invoiceng?x=1")
    assert (m.route, m.rest, m.query) == ("inv", "", "x=1")


def test_raw_query_kept_byte_for_byte(router: Router[str]) -> None:
    m = router.match("/api/a%20b?q=%2F%3d&&x=%E2%82%AC;y")
    assert m.rest == "a%20b"
    assert m.query == "q=%2F%3d&&x=%E2%82%AC;y"
    assert join_upstream("/v1/", m.rest, m.query) == "/v1/a%20b?q=%2F%3d&&x=%E2%82%AC;y"


def test_empty_query_is_kept_distinct_from_none(router: Router[str]) -> None:
    assert router.match("/api/x?").query == ""
    assert router.match("/api/x").query is None
    assert join_upstream("/v1/", "x", "") == "/v1/x?"


@pytest.mark.parametrize(
    "target",
    ["/nope", "/", "/apix/y", "/invoicengx"],
)
def test_no_route(router: Router[str], target: str) -> None:
    with pytest.raises(NoRoute):
        router.match(target)


@pytest.mark.parametrize(
    "target",
    [
        "/api/../admin",
        "/api/a/../../admin",
        "/api/%2e%2e/admin",
        "/api/%2E%2e/admin",
        "/api/a%2f..%2f..%2fadmin",
        "/api/..%5cadmin",
        "/api/%252e%252e/admin",
        "/api/./x",
        "/api//etc/passwd",
        "/api/%2fetc",
        "/api/a%00b",
        "http://evil.example/api/x",
        "evil.example:443",
        "*",
    ],
)
def test_escaping_or_foreign_targets_are_refused(router: Router[str], target: str) -> None:
    with pytest.raises(BadRequest):
        router.match(target)


def test_dots_inside_names_are_fine(router: Router[str]) -> None:
    assert router.match("/api/file..txt").rest == "file..txt"
    assert router.match("/api/.well-known/x").rest == ".well-known/x"
    assert router.match("/api/a%2Fb").rest == "a%2Fb"


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="ab/.%2eEfF5c\\\x00é", max_size=12))
def test_check_rest_fast_path_agrees_with_the_full_check(rest: str) -> None:
    """The shortcut for plain paths never lets through what the full decoding refuses."""

    def refused(check: Callable[[str], None]) -> bool:
        try:
            check(rest)
        except BadRequest:
            return True
        return False

    full = refused(check_decoded) if rest else False
    assert refused(check_rest) == full
