"""DICOM filters: which instances never leave for a core. A pure decision.

The syntax and meaning are the original gateway's, a JSON list of rules:

    DICOM_FILTERS=[{"tag": {"group": "0010", "element": "0010"}, "pattern": "^TEST.*",
                    "should_match": false},
                   {"tag": {"group": "0008", "element": "0060"}, "pattern": "^SR$",
                    "should_match": true}]

An instance is skipped when, for any rule, its tag is present and its value matches the
pattern while `should_match` is false, or does not match while it is true. A missing tag never
skips. The pattern is a regular expression searched anywhere in the value (anchor it with ^
and $ to match the whole value). The value is the attribute as text: a multi-valued one with
its values joined by a backslash, as DICOM writes them, a person's name as `FAMILY^GIVEN`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

import msgspec

from pacsor.errors import InvalidInput


class FilterError(InvalidInput):
    """A malformed DICOM_FILTERS value; the message names the rule and the fault."""


class FilterRule(msgspec.Struct, frozen=True):
    number: int  # 1-based position in the list, as people count
    group: int
    element: int
    pattern: str
    should_match: bool

    @property
    def tag(self) -> int:
        return (self.group << 16) | self.element

    def __str__(self) -> str:
        verb = "must match" if self.should_match else "must not match"
        return f"rule {self.number}: ({self.group:04X},{self.element:04X}) {verb} {self.pattern}"


_HEX4 = re.compile(r"^[0-9A-Fa-f]{4}$")


def _hex(rule: int, name: str, value: object) -> int:
    if not isinstance(value, str) or not _HEX4.match(value):
        raise FilterError(f"rule {rule}: bad tag: {name} must be 4 hex digits, got {value!r}")
    return int(value, 16)


def parse_filters(raw: str) -> tuple[FilterRule, ...]:
    """The rules of a DICOM_FILTERS value ("" or "[]": none); FilterError when malformed."""
    if not raw.strip():
        return ()
    try:
        items = json.loads(raw)
    except ValueError as err:
        raise FilterError(f"bad JSON: {err}") from None
    if not isinstance(items, list):
        raise FilterError(f"bad JSON: expected a list of rules, got {type(items).__name__}")
    rules: list[FilterRule] = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise FilterError(f"rule {number}: expected an object, got {json.dumps(item)}")
        unknown = set(item) - {"tag", "pattern", "should_match"}
        if unknown:
            raise FilterError(f"rule {number}: unknown key {sorted(unknown)[0]!r}")
        tag = item.get("tag")
        if not isinstance(tag, dict):
            raise FilterError(
                f'rule {number}: bad tag: expected {{"group": "0010", "element": '
                f'"0010"}}, got {json.dumps(tag)}'
            )
        group = _hex(number, "group", tag.get("group"))
        element = _hex(number, "element", tag.get("element"))
        pattern = item.get("pattern")
        if not isinstance(pattern, str):
            raise FilterError(f"rule {number}: bad regex: pattern must be a string")
        try:
            re.compile(pattern)
        except re.error as err:
            raise FilterError(f"rule {number}: bad regex {pattern!r}: {err}") from None
        should_match = item.get("should_match")
        if not isinstance(should_match, bool):
            raise FilterError(
                f"rule {number}: should_match must be true or false, got {json.dumps(should_match)}"
            )
        rules.append(FilterRule(number, group, element, pattern, should_match))
    return tuple(rules)


def skipping_rule(rules: Sequence[FilterRule], values: Mapping[int, str]) -> FilterRule | None:
    """The first rule that skips an instance whose present attributes are `values` (by tag),
    or None when the instance is kept."""
    for rule in rules:
        value = values.get(rule.tag)
        if value is None:
            continue  # a missing tag never skips
        if (re.search(rule.pattern, value) is not None) != rule.should_match:
            return rule
    return None
