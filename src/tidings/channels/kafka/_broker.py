"""What the channel asks the broker directly, outside the producer and the group consumer.

Topic creation, the true end of each partition, the group's committed offsets, and commits made
without joining the group (for `purge` while no consumer of the group runs).

The end of a partition is read from a Fetch response (its high watermark) rather than from
ListOffsets: some Kafka-compatible brokers (Tansu) answer ListOffsets(LATEST) with the base offset of
the last record batch + 1, which undercounts whenever records were produced in batches. A one-byte
Fetch that waits at most a millisecond costs about as much and is right on every broker.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Broker", "PartitionEnds", "TopicSpec"]

#: Kafka error codes the channel treats as expected answers.
_TOPIC_ALREADY_EXISTS = 36
_NONE = 0


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int


@dataclass(frozen=True, slots=True)
class PartitionEnds:
    """Where a partition's records start and end (the next offset to be written)."""

    log_start: int
    high_watermark: int


class Broker:
    """A plain client connection for administrative requests (aiokafka's AIOKafkaClient)."""

    def __init__(self, bootstrap_servers: str, client_id: str, request_timeout: float) -> None:
        from aiokafka.client import AIOKafkaClient

        self._client: Any = AIOKafkaClient(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            request_timeout_ms=int(request_timeout * 1000),
        )
        self._metadata: Any = None

    async def start(self) -> None:
        await self._client.bootstrap()

    async def close(self) -> None:
        await self._client.close()

    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> dict[str, int]:
        """Create the topics that do not exist yet; return each topic's partition count."""
        from aiokafka.errors import for_code
        from aiokafka.protocol.admin import CreateTopicsRequest

        request = CreateTopicsRequest(
            create_topic_requests=[(s.name, s.partitions, s.replication_factor, [], []) for s in specs],
            timeout=int(self._client._request_timeout_ms),
            validate_only=False,
        )
        response = await self._client.send(await self._controller(), request)
        for topic_error in response.topic_errors:
            name, code = topic_error[0], topic_error[1]
            if code not in (_NONE, _TOPIC_ALREADY_EXISTS):
                raise for_code(code)(f"creating topic {name!r} failed")
        return await self.partition_counts([s.name for s in specs])

    async def partition_counts(self, topics: Iterable[str]) -> dict[str, int]:
        """The partition count of each topic, from fresh metadata (retried while a topic settles)."""
        wanted = list(topics)
        for attempt in range(50):
            self._metadata = await self._client.fetch_all_metadata()
            counts = {topic: len(self._metadata.partitions_for_topic(topic) or ()) for topic in wanted}
            if all(counts.values()):
                return counts
            await asyncio.sleep(0.02 * (attempt + 1))
        missing = [topic for topic, count in counts.items() if not count]
        raise RuntimeError(f"the broker does not list topics {missing} after creating them")

    async def _controller(self) -> int:
        metadata = await self._client.fetch_all_metadata()
        controller = metadata.controller
        node_id: int = controller.nodeId if controller is not None else self._client.get_random_node()
        return node_id

    async def ends(self, offsets: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], PartitionEnds]:
        """The ends of the given partitions, asking each leader with one Fetch at the given offsets.

        Fetching at an offset that has records returns at most one batch of them; fetching at the end
        waits for `max_wait_time` (1 ms). Either way the answer carries the high watermark.
        """
        from aiokafka.errors import for_code
        from aiokafka.protocol.fetch import FetchRequest
        from aiokafka.structs import TopicPartition

        if self._metadata is None:
            self._metadata = await self._client.fetch_all_metadata()
        by_leader: dict[int, dict[str, list[tuple[int, int, int]]]] = defaultdict(lambda: defaultdict(list))
        for (topic, partition), offset in offsets.items():
            leader = self._metadata.leader_for_partition(TopicPartition(topic, partition))
            if leader is None or leader < 0:
                self._metadata = await self._client.fetch_all_metadata()
                leader = self._metadata.leader_for_partition(TopicPartition(topic, partition))
                if leader is None or leader < 0:
                    raise for_code(5)(f"no leader for {topic}/{partition}")  # LeaderNotAvailable
            by_leader[leader][topic].append((partition, max(offset, 0), 1))
        requests = [
            self._client.send(leader, FetchRequest(1, 1, 1, 0, list(topics.items())))
            for leader, topics in by_leader.items()
        ]
        ends: dict[tuple[str, int], PartitionEnds] = {}
        for response in await asyncio.gather(*requests):
            version = response.API_VERSION
            for topic, partitions in response.topics:
                for row in partitions:
                    partition, code, high_watermark = row[0], row[1], row[2]
                    if code and high_watermark < 0:
                        raise for_code(code)(f"fetching the end of {topic}/{partition} failed")
                    log_start = row[4] if version >= 5 and row[4] >= 0 else 0
                    ends[(topic, partition)] = PartitionEnds(log_start, high_watermark)
        return ends

    async def committed(
        self, group_id: str, partitions: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """The group's committed offset of each partition; -1 where it committed none."""
        from aiokafka.errors import for_code
        from aiokafka.protocol.commit import OffsetFetchRequest

        by_topic: dict[str, list[int]] = defaultdict(list)
        for topic, partition in partitions:
            by_topic[topic].append(partition)
        response = await self._client.send(
            await self._coordinator(group_id), OffsetFetchRequest(group_id, list(by_topic.items()))
        )
        offsets: dict[tuple[str, int], int] = {}
        for topic, rows in response.topics:
            for partition, offset, _metadata, code in rows:
                if code:
                    raise for_code(code)(f"reading the offset of {topic}/{partition} failed")
                offsets[(topic, partition)] = offset
        return offsets

    async def commit_outside_group(
        self, group_id: str, offsets: Mapping[tuple[str, int], int]
    ) -> dict[tuple[str, int], int]:
        """Commit offsets for a group without being its member; returns the partitions refused.

        Brokers accept this only while the group has no members (error 25, unknown member, otherwise).
        """
        from aiokafka.protocol.commit import OffsetCommitRequest

        by_topic: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
        for (topic, partition), offset in offsets.items():
            by_topic[topic].append((partition, offset, ""))
        response = await self._client.send(
            await self._coordinator(group_id),
            OffsetCommitRequest(group_id, -1, "", -1, list(by_topic.items())),
        )
        refused: dict[tuple[str, int], int] = {}
        for topic, rows in response.topics:
            for partition, code in rows:
                if code:
                    refused[(topic, partition)] = code
        return refused

    async def leave_group(self, group_id: str, member_id: str) -> None:
        """Tell the coordinator a member has left, so that the next member joins without waiting."""
        from aiokafka.protocol.group import LeaveGroupRequest

        await self._client.send(await self._coordinator(group_id), LeaveGroupRequest(group_id, member_id))

    async def _coordinator(self, group_id: str) -> int:
        from aiokafka.errors import for_code
        from aiokafka.protocol.coordination import FindCoordinatorRequest

        response = await self._client.send(
            self._client.get_random_node(), FindCoordinatorRequest(group_id, 0)
        )
        if response.error_code:
            raise for_code(response.error_code)(f"finding the coordinator of group {group_id!r} failed")
        coordinator: int = response.coordinator_id
        return coordinator
