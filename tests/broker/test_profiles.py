"""`SLUICE_BROKER` picks one profile, and on Apache Kafka none of the embedded broker's
workarounds is installed or switched on."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from broker import PROFILES, Broker, SluiceSettings
from broker.profiles import profile


def _installed_after(kind: str) -> bool:
    """Whether making a Broker of `kind` installs aiokafka patches (in a fresh process:
    they are process-wide)."""
    code = ("from broker import PROFILES, Broker; from broker import tansu; "
            f"assert not tansu.installed(); Broker('127.0.0.1:1', PROFILES['{kind}']); "
            "print(tansu.installed())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip() == "True"


def test_only_the_embedded_brokers_profile_patches_aiokafka() -> None:
    assert _installed_after("tansu")
    assert not _installed_after("kafka")


async def test_on_kafka_replies_neither_rotate_nor_change_their_pace() -> None:
    broker = Broker("127.0.0.1:1", PROFILES["kafka"])
    router = broker.replies("gw")
    assert router._rotate_after == 0 and router._pace is None
    assert broker.streams_pace(frozenset({"sluice.leases"}), lambda: None) is None
    ends = {("t", 0): 5}
    assert await broker.true_ends(ends) == ends  # read as reported, no extra consumer


async def test_the_embedded_brokers_profile_has_its_workarounds_on() -> None:
    p = PROFILES["tansu"]
    assert p.hole_checks and p.slow_fetch_backoff and p.true_end_offsets
    assert p.reply_rotate_records > 0 and p.replies_busy_wait_ms is not None
    assert p.streams_paced and not PROFILES["kafka"].streams_paced
    router = Broker("127.0.0.1:1", p).replies("gw")
    assert router._rotate_after == p.reply_rotate_records and router._pace is not None


def test_settings_pick_the_profile_and_tuning_replaces_fields(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_BROKER", "kafka")
    monkeypatch.setenv("SLUICE_BROKER_TUNING", '{"replies_wait_ms": 100}')
    settings = SluiceSettings()
    assert settings.profile == PROFILES["kafka"].model_copy(update={"replies_wait_ms": 100})
    monkeypatch.delenv("SLUICE_BROKER")
    monkeypatch.delenv("SLUICE_BROKER_TUNING")
    assert SluiceSettings().profile is PROFILES["tansu"]


def test_an_unknown_broker_or_tuning_field_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        profile("tansu", {"reply_rotate": 10})  # a typo is not ignored silently
    monkeypatch.setenv("SLUICE_BROKER", "redpanda-ish")
    with pytest.raises(ValidationError):
        SluiceSettings()
