"""An account survives its table value: every field, through dump, JSON and load.

`Account.load` and `Account.dump` name the containers one by one (they are on billing's hot
path), so these tests fail when a field is added to `Account` or `Holding` and not carried,
or carried without being copied.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

from streams.limiter import Account, Holding


def every_field_set() -> Account:
    return Account(
        bucket=3.5, bucket_at=1_800_000_000.25, hour=1_799_996_400, hour_used=4,
        day=1_799_971_200, day_used=9, minute=1_799_999_940, tokens_used=77,
        holdings={"g1": Holding(slots=2, expires=1_800_000_030.5)},
        applied={"usage:3": 12},
        totals={"2027-01-15": {"requests": 1, "cost_micros": 5}},
        alerted=["daily_tokens:2027-01-15"],
        recent=["0123456789abcdef"],
        skipped=["usage:3@11"],
    )


def unset(obj: Any) -> list[str]:
    """The fields of a dataclass instance that still hold their default."""
    out = []
    for f in dataclasses.fields(obj):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue  # required: no default to be mistaken for
        if getattr(obj, f.name) == default:
            out.append(f.name)
    return out


def containers(obj: Any) -> Iterator[int]:
    """The ids of every mutable object reachable from `obj`."""
    if dataclasses.is_dataclass(obj):
        yield id(obj)
        for f in dataclasses.fields(obj):
            yield from containers(getattr(obj, f.name))
    elif isinstance(obj, dict):
        yield id(obj)
        for value in obj.values():
            yield from containers(value)
    elif isinstance(obj, list):
        yield id(obj)
        for value in obj:
            yield from containers(value)


def test_the_sample_sets_every_field() -> None:
    account = every_field_set()
    assert unset(account) == [], "give these fields a value other than their default"
    assert all(unset(h) == [] for h in account.holdings.values())


def test_every_field_survives_dump_json_and_load() -> None:
    account = every_field_set()
    again = Account.load(json.loads(json.dumps(account.dump())))
    assert again == account
    assert [type(getattr(again, f.name)) for f in dataclasses.fields(Account)] == [
        type(getattr(account, f.name)) for f in dataclasses.fields(Account)]


def test_the_table_value_shares_nothing_with_the_account() -> None:
    # The table keeps the value it was given: an account changed after `dump`, or a value
    # changed through the account `load` made of it, would change the table unwritten.
    account = every_field_set()
    raw = account.dump()
    assert not set(containers(account)) & set(containers(raw))
    loaded = Account.load(raw)
    assert not set(containers(loaded)) & set(containers(raw))


def test_no_value_is_a_fresh_account() -> None:
    assert Account.load(None) == Account.load({}) == Account()
    assert Account.load(Account().dump()) == Account()
