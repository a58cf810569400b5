from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from insignia.selectors import InvalidSelector, Selector, canonical, matches


def test_parse_splits_on_the_first_colon_only() -> None:
    sel = Selector.parse("docker:label:app:web")
    assert (sel.type, sel.value) == ("docker", "label:app:web")
    assert str(sel) == "docker:label:app:web"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("unix", "expected 'type:value'"),
        (":uid:0", "type is empty"),
        ("unix:", "value is empty"),
        ("Unix:uid:0", "type has characters"),
        ("un ix:uid:0", "type has characters"),
        ("unix:uid:0\n", "control characters"),
        ("unix:" + "x" * 1025, "longer than"),
    ],
)
def test_malformed_selectors_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidSelector, match=reason):
        Selector.parse(text)


def test_canonical_sorts_and_deduplicates() -> None:
    a, b = Selector.parse("unix:uid:0"), Selector.parse("k8s:ns:default")
    assert canonical([a, b, a]) == (b, a)


def test_matches_is_a_non_empty_subset() -> None:
    uid0 = Selector.parse("unix:uid:0")
    gid0 = Selector.parse("unix:gid:0")
    assert matches([uid0], [uid0, gid0])
    assert matches([uid0, gid0], [gid0, uid0])
    assert not matches([uid0, gid0], [uid0])
    assert not matches([], [uid0])


selectors = st.builds(
    Selector,
    st.sampled_from(["unix", "k8s", "docker", "systemd"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz:0123456789=", min_size=1, max_size=12),
)


@given(st.lists(selectors, max_size=6), st.lists(selectors, max_size=6))
def test_matching_is_set_inclusion(entry: list[Selector], workload: list[Selector]) -> None:
    assert matches(entry, workload) == (bool(entry) and set(entry) <= set(workload))
    assert matches(entry, workload + entry) == bool(entry)


@given(st.lists(selectors, max_size=6))
def test_string_form_round_trips(sels: list[Selector]) -> None:
    for sel in sels:
        assert Selector.parse(str(sel)) == sel
    assert canonical(canonical(sels)) == canonical(sels)
