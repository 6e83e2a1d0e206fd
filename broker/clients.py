"""`Broker`: the factory of every Kafka client a Sluice process makes, and its topics."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from broker import tansu
from broker.profiles import Profile
from broker.replies import ReplyRouter
from broker.settings import SluiceSettings
from schemas import topics


class Broker:
    """One broker, read as its profile says. Making one installs the profile's
    workarounds in this process (aiokafka's fetcher is shared by every consumer)."""

    def __init__(self, bootstrap: str, profile: Profile) -> None:
        self.bootstrap = bootstrap
        self.profile = profile
        tansu.install(holes=profile.hole_checks, slow_fetches=profile.slow_fetch_backoff)

    @classmethod
    def of(cls, settings: SluiceSettings) -> Broker:
        return cls(settings.kafka_bootstrap, settings.profile)

    def producer(self, **options: Any) -> AIOKafkaProducer:
        """Sends at once (linger 0: aiokafka still batches whatever queues up behind a
        request in flight), acknowledged by the partition leader."""
        return AIOKafkaProducer(bootstrap_servers=self.bootstrap,
                                **{"linger_ms": 0, "acks": 1, **options})

    def reader(self, wait_ms: int, **options: Any) -> AIOKafkaConsumer:
        """A consumer outside any group, assigned partitions by hand."""
        return AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=wait_ms, **options)

    def member(self, group: str, wait_ms: int, **options: Any) -> AIOKafkaConsumer:
        """A member of consumer group `group` that commits by hand and, in a new group,
        starts from the oldest record."""
        return AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group,
                                enable_auto_commit=False, fetch_max_wait_ms=wait_ms,
                                **{"auto_offset_reset": "earliest", **options})

    def replies(self, gateway_id: str, **options: Any) -> ReplyRouter:
        """The reader of a gateway's reply topics."""
        p = self.profile
        return ReplyRouter(self.reader(p.replies_wait_ms), self, gateway_id,
                           rotate_after=p.reply_rotate_records,
                           busy_wait_ms=p.replies_busy_wait_ms, busy_for_s=p.busy_s,
                           **options)

    def streams_pace(self, busy_topics: frozenset[str], fetcher: Callable[[], Any]
                     ) -> tansu.StreamsPace | None:
        """The streams app consumer's changing fetch wait, or None where it is fixed
        (`profile.streams_wait_ms`)."""
        p = self.profile
        if not p.streams_paced:
            return None
        return tansu.StreamsPace(
            p.streams_wait_ms, p.streams_idle_wait_ms,
            p.streams_urgent_wait_ms or p.streams_wait_ms, p.streams_others_every_ms / 1000,
            p.busy_s, busy_topics, fetcher)

    async def true_ends(self, ends: dict[Any, int]) -> dict[Any, int]:
        """Partition end offsets as reported, corrected where the broker misreports them."""
        if not self.profile.true_end_offsets:
            return ends
        return await tansu.true_ends(self.bootstrap, ends)

    async def ensure(self, extra: Iterable[topics.TopicSpec] = (), *, fixed: bool = True
                     ) -> None:
        """Create every fixed topic (unless not `fixed`) and `extra` that does not exist
        yet, with its layout.

        Every service calls this at start, so whichever comes first lays the topics out;
        a broker that auto-creates topics would give them its own partition count, and
        tables partitioned like `sluice.usage` would no longer line up.
        """
        specs = {s.name: s for s in (*(topics.STATIC if fixed else ()), *extra)}
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [s for name, s in specs.items() if name not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([NewTopic(s.name, s.partitions, 1,
                                                        topic_configs=s.config)
                                               for s in missing])
        finally:
            await admin.close()

    async def delete(self, names: Iterable[str]) -> None:
        """Delete topics; one already gone is not an error."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(list(names))
        finally:
            await admin.close()
