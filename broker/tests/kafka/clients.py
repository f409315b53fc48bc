"""Real Kafka clients against a Sluice broker's Kafka listener (run by broker/tests/kafka.rs).

usage: clients.py CLIENT SCENARIO BOOTSTRAP TOPIC GROUP
  CLIENT:   confluent | confluent-classic | kafka-python | aiokafka
  SCENARIO: round-trip   create the topic, produce keyed records with idempotence, consume
                         them in a group (each exactly once, in order per key), commit, stop,
                         resume from the committed offset, list offsets and seek
            split        two members of one group share the topic's partitions
            produce N [SIZE]   produce N keyed records (values padded to SIZE bytes) to an
                               existing topic
            consume N P        consume N records from the start of an existing topic's P
                               partitions, print them (values without their padding)

Prints one JSON line with what it saw; exits non-zero with a message on any failure.
"""

import asyncio
import io
import json
import logging
import sys
import time

CLIENT, SCENARIO, BOOTSTRAP, TOPIC, GROUP = sys.argv[1:6]
EXTRA = sys.argv[6:]
# confluent-classic: librdkafka with the classic group protocol (JoinGroup/SyncGroup) instead
# of KIP-848's ConsumerGroupHeartbeat.
GROUP_PROTOCOL = "classic" if CLIENT.endswith("-classic") else "consumer"
KEYS = 8
PARTITIONS = 2
DEADLINE_S = 60


# The Python clients' own logs (their group coordinators' at debug), kept in memory and shown
# only when the scenario fails: what the client saw is half of a diagnosis.
CLIENT_LOG = io.StringIO()
_handler = logging.StreamHandler(CLIENT_LOG)
_handler.setFormatter(logging.Formatter("%(relativeCreated)8.0f %(threadName)s %(name)s %(levelname)s %(message)s"))
logging.getLogger().addHandler(_handler)
logging.getLogger().setLevel(logging.WARNING)
for _name in ("kafka.coordinator", "aiokafka.consumer.group_coordinator"):
    logging.getLogger(_name).setLevel(logging.DEBUG)
# kafka-python's consumer coordinator says "need_rejoin" at every poll.
logging.getLogger("kafka.coordinator.consumer").setLevel(logging.INFO)


def fail(message):
    print(f"FAIL [{CLIENT} {SCENARIO}]: {message}", file=sys.stderr)
    log = CLIENT_LOG.getvalue()
    if log:
        print(f"----- client log (last 200 lines) -----", file=sys.stderr)
        print("\n".join(log.splitlines()[-200:]), file=sys.stderr)
    sys.exit(1)


def check_exactly_once_in_order(records, expected_count):
    """records: (key, seq) in delivery order. Every (key, seq) once, seqs per key ascending."""
    seen = set()
    last = {}
    for key, seq in records:
        if (key, seq) in seen:
            fail(f"duplicate record {key}/{seq}")
        seen.add((key, seq))
        if key in last and seq <= last[key]:
            fail(f"key {key}: {seq} after {last[key]}")
        last[key] = seq
    if len(seen) != expected_count:
        fail(f"{len(seen)} records, expected {expected_count}")


def decode(key, value):
    key = key.decode()
    k, seq = value.decode().rstrip(".").split(":")
    if k != key:
        fail(f"value {value!r} under key {key!r}")
    return key, int(seq)


def records(start, count, value_bytes=0):
    """count keyed records, numbered from start: key k{i % KEYS}, value 'k..:i', padded with
    '.' to value_bytes."""
    for i in range(start, start + count):
        key = f"k{i % KEYS}"
        yield key.encode(), f"{key}:{i}".ljust(value_bytes, ".").encode()


# ----------------------------------------------------------------------------- confluent-kafka

def confluent():
    from confluent_kafka import Consumer, Producer, TopicPartition, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    common = {"bootstrap.servers": BOOTSTRAP, "broker.address.family": "v4"}

    def create_topic():
        admin = AdminClient(common)
        futures = admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)])
        futures[TOPIC].result(timeout=30)
        md = admin.list_topics(TOPIC, timeout=10)
        if len(md.topics[TOPIC].partitions) != PARTITIONS:
            fail(f"metadata shows {len(md.topics[TOPIC].partitions)} partitions")
        return admin

    def produce(start, count, value_bytes=0):
        producer = Producer({**common, "enable.idempotence": True, "linger.ms": 5})
        errors = []

        def delivered(err, msg):
            if err is not None:
                errors.append(str(err))

        for key, value in records(start, count, value_bytes):
            producer.produce(TOPIC, key=key, value=value, on_delivery=delivered)
            producer.poll(0)
        left = producer.flush(30)
        if left or errors:
            fail(f"produce: {left} undelivered, errors {errors[:3]}")

    def consumer(extra=None):
        config = {
            **common,
            "group.id": GROUP,
            "group.protocol": GROUP_PROTOCOL,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
        config.update(extra or {})
        return Consumer(config)

    def consume(c, count, subscribe=True):
        if subscribe:
            c.subscribe([TOPIC])
        got = []
        deadline = time.time() + DEADLINE_S
        while len(got) < count and time.time() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                fail(f"consume: {msg.error()}")
            got.append((msg.partition(), msg.offset(), *decode(msg.key(), msg.value())))
        return got

    if SCENARIO == "produce":
        produce(0, int(EXTRA[0]), int(EXTRA[1]) if len(EXTRA) > 1 else 0)
        print(json.dumps({"produced": int(EXTRA[0])}))
        return
    if SCENARIO == "consume":
        c = Consumer({**common, "group.id": GROUP, "enable.auto.commit": False})
        c.assign([TopicPartition(TOPIC, p, 0) for p in range(int(EXTRA[1]))])
        got = []
        deadline = time.time() + DEADLINE_S
        while len(got) < int(EXTRA[0]) and time.time() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                fail(f"consume: {msg.error()}")
            value = msg.value().decode()
            got.append([msg.partition(), msg.offset(), msg.key().decode(), value.rstrip("."), len(value)])
        c.close()
        print(json.dumps({"records": got}))
        return
    if SCENARIO == "split":
        create_topic()
        produce(0, 40)
        a, b = consumer(), consumer()
        a.subscribe([TOPIC])
        b.subscribe([TOPIC])
        deadline = time.time() + DEADLINE_S
        ta = tb = set()
        while time.time() < deadline:
            for c in (a, b):
                msg = c.poll(0.2)
                if msg is not None and msg.error():
                    fail(f"split: {msg.error()}")
            ta = {p.partition for p in a.assignment()}
            tb = {p.partition for p in b.assignment()}
            if ta and tb and ta | tb == set(range(PARTITIONS)) and not ta & tb:
                a.close()
                b.close()
                print(json.dumps({"a": sorted(ta), "b": sorted(tb)}))
                return
        fail(f"no split: a {ta}, b {tb}")

    # round-trip
    create_topic()
    produce(0, 200)
    c = consumer()
    got = consume(c, 200)
    check_exactly_once_in_order([(k, s) for (_, _, k, s) in got], 200)
    c.commit(asynchronous=False)
    committed = c.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=10)
    if sum(tp.offset for tp in committed) != 200:
        fail(f"committed {[(tp.partition, tp.offset) for tp in committed]}")
    c.close()
    # Resume from the committed offsets: only what was produced since.
    produce(200, 50)
    c = consumer()
    resumed = consume(c, 50)
    check_exactly_once_in_order([(k, s) for (_, _, k, s) in resumed], 50)
    if min(s for (_, _, _, s) in resumed) < 200:
        fail("resumed before the committed offset")
    extra = c.poll(1.0)
    if extra is not None and not extra.error():
        fail(f"a record past the end: {extra.offset()}")
    c.close()
    # List offsets and seek.
    c = Consumer({**common, "group.id": GROUP + "-seek", "enable.auto.commit": False})
    low, high = c.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=10)
    if low != 0 or high <= 0:
        fail(f"watermarks {low} {high}")
    times = c.offsets_for_times([TopicPartition(TOPIC, 0, 0)], timeout=10)
    if times[0].offset != 0:
        fail(f"offset for time 0: {times[0].offset}")
    target = high // 2
    c.assign([TopicPartition(TOPIC, 0, target)])
    first = None
    deadline = time.time() + DEADLINE_S
    while first is None and time.time() < deadline:
        msg = c.poll(0.5)
        if msg is not None and not msg.error():
            first = msg.offset()
    if first != target:
        fail(f"seek to {target} read {first}")
    c.close()
    print(json.dumps({"consumed": len(got), "resumed": len(resumed), "watermarks": [low, high]}))


# ------------------------------------------------------------------------------- kafka-python

def kafka_python():
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.structs import OffsetAndMetadata

    def create_topic():
        admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
        admin.close()

    def produce(start, count):
        producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, enable_idempotence=True, acks="all", linger_ms=5)
        futures = [producer.send(TOPIC, key=k, value=v) for k, v in records(start, count)]
        producer.flush(30)
        for f in futures:
            f.get(timeout=30)
        producer.close()

    def consumer():
        return KafkaConsumer(
            bootstrap_servers=BOOTSTRAP,
            group_id=GROUP,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    parts = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]

    def consume(c, count):
        got = []
        deadline = time.time() + DEADLINE_S
        while len(got) < count and time.time() < deadline:
            for batch in c.poll(timeout_ms=500).values():
                for msg in batch:
                    got.append((msg.partition, msg.offset, *decode(msg.key, msg.value)))
        return got

    if SCENARIO == "produce":
        produce(0, int(EXTRA[0]))
        print(json.dumps({"produced": int(EXTRA[0])}))
        return
    if SCENARIO == "split":
        create_topic()
        produce(0, 40)
        import threading

        # Two members, each polled by a thread of its own as two processes would be (a
        # member's poll may wait in JoinGroup until the other member joins too).
        members = [consumer(), consumer()]
        held = [set(), set()]
        done = threading.Event()

        def member(i):
            c = members[i]
            # kafka-python 3.0.12 drops a join whose SyncGroup answer comes after the poll's
            # timeout when the join was started by a metadata change (its leader assigned before
            # it knew the topic): the next poll no longer needs a rejoin and never reads the
            # answer, heartbeats stay off and the member's session ends. Knowing the topic
            # before subscribing keeps the first assignment complete, and a longer poll gives
            # a slow SyncGroup (the coordinator persists the assignment first) time to land.
            if not c.partitions_for_topic(TOPIC):
                fail("no metadata for the topic")
            c.subscribe([TOPIC])
            while not done.is_set():
                c.poll(timeout_ms=500)
                held[i] = {tp.partition for tp in c.assignment()}

        threads = [threading.Thread(target=member, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        deadline = time.time() + DEADLINE_S
        split = False
        while time.time() < deadline and not split:
            ta, tb = held
            split = ta and tb and ta | tb == set(range(PARTITIONS)) and not ta & tb
            time.sleep(0.05)
        described = None
        if split:
            # The group as DescribeGroups shows it: both members, their hosts and assignments.
            admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
            described = admin.describe_groups([GROUP])[GROUP]
            admin.close()
        done.set()
        for t in threads:
            t.join()
        for c in members:
            c.close()
        if not split:
            fail(f"no split: a {held[0]}, b {held[1]}")
        if described["protocol_type"] != "consumer" or len(described["members"]) != 2:
            fail(f"described {described}")
        for m in described["members"]:
            if m["client_host"] != "/127.0.0.1" or not m["member_assignment"]["assigned_partitions"]:
                fail(f"described member {m}")
        print(json.dumps({"a": sorted(held[0]), "b": sorted(held[1])}))
        return

    create_topic()
    produce(0, 200)
    c = consumer()
    c.partitions_for_topic(TOPIC)  # see `member` above: the first assignment knows the topic
    c.subscribe([TOPIC])
    got = consume(c, 200)
    check_exactly_once_in_order([(k, s) for (_, _, k, s) in got], 200)
    c.commit()
    committed = [c.committed(tp) for tp in parts]
    if sum(committed) != 200:
        fail(f"committed {committed}")
    c.close()
    # Resume from the committed offsets: only what was produced since.
    produce(200, 50)
    c = consumer()
    c.partitions_for_topic(TOPIC)
    c.subscribe([TOPIC])
    resumed = consume(c, 50)
    check_exactly_once_in_order([(k, s) for (_, _, k, s) in resumed], 50)
    if min(s for (_, _, _, s) in resumed) < 200:
        fail("resumed before the committed offset")
    c.close()
    # List offsets and seek, on a consumer of no group.
    c = KafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
    c.assign(parts)
    begin = c.beginning_offsets(parts)
    end = c.end_offsets(parts)
    if sum(end.values()) != 250 or any(begin.values()):
        fail(f"offsets {begin} {end}")
    times = c.offsets_for_times({parts[0]: 0})
    if times[parts[0]].offset != 0:
        fail(f"offset for time 0: {times[parts[0]]}")
    target = end[parts[0]] // 2
    c.seek(parts[0], target)
    c.pause(parts[1])
    first = None
    deadline = time.time() + DEADLINE_S
    while first is None and time.time() < deadline:
        for batch in c.poll(timeout_ms=500).values():
            first = batch[0].offset
            break
    if first != target:
        fail(f"seek to {target} read {first}")
    c.close()
    print(json.dumps({"consumed": len(got), "resumed": len(resumed)}))


# ----------------------------------------------------------------------------------- aiokafka

async def aiokafka_main():
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def create_topic():
        admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        await admin.start()
        await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
        await admin.close()

    async def produce(start, count):
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, enable_idempotence=True, linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(TOPIC, key=k, value=v) for k, v in records(start, count)]
            for f in futures:
                await asyncio.wait_for(f, 30)
        finally:
            await producer.stop()

    parts = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]

    async def consumer(group=GROUP):
        c = AIOKafkaConsumer(
            bootstrap_servers=BOOTSTRAP,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await c.start()
        if group is None:
            c.assign(parts)
        else:
            c.subscribe([TOPIC])
        return c

    async def consume(c, count):
        got = []
        deadline = time.time() + DEADLINE_S
        while len(got) < count and time.time() < deadline:
            batches = await c.getmany(timeout_ms=500)
            for batch in batches.values():
                for msg in batch:
                    got.append((msg.partition, msg.offset, *decode(msg.key, msg.value)))
        return got

    if SCENARIO == "produce":
        await produce(0, int(EXTRA[0]))
        print(json.dumps({"produced": int(EXTRA[0])}))
        return
    if SCENARIO == "split":
        await create_topic()
        await produce(0, 40)
        a, b = await consumer(), await consumer()
        deadline = time.time() + DEADLINE_S
        ta = tb = set()
        while time.time() < deadline:
            await a.getmany(timeout_ms=100)
            await b.getmany(timeout_ms=100)
            ta = {tp.partition for tp in a.assignment()}
            tb = {tp.partition for tp in b.assignment()}
            if ta and tb and ta | tb == set(range(PARTITIONS)) and not ta & tb:
                await a.stop()
                await b.stop()
                print(json.dumps({"a": sorted(ta), "b": sorted(tb)}))
                return
        fail(f"no split: a {ta}, b {tb}")

    await create_topic()
    await produce(0, 200)
    c = await consumer()
    got = await consume(c, 200)
    check_exactly_once_in_order([(k, s) for (_, _, k, s) in got], 200)
    await c.commit()
    committed = [await c.committed(tp) for tp in parts]
    if sum(committed) != 200:
        fail(f"committed {committed}")
    await c.stop()
    await produce(200, 50)
    c = await consumer()
    resumed = await consume(c, 50)
    check_exactly_once_in_order([(k, s) for (_, _, k, s) in resumed], 50)
    if min(s for (_, _, _, s) in resumed) < 200:
        fail("resumed before the committed offset")
    await c.stop()
    # List offsets and seek, on a consumer of no group.
    c = await consumer(None)
    begin = await c.beginning_offsets(parts)
    end = await c.end_offsets(parts)
    if sum(end.values()) != 250 or any(begin.values()):
        fail(f"offsets {begin} {end}")
    times = await c.offsets_for_times({parts[0]: 0})
    if times[parts[0]].offset != 0:
        fail(f"offset for time 0: {times[parts[0]]}")
    target = end[parts[0]] // 2
    c.seek(parts[0], target)
    c.pause(parts[1])
    first = None
    deadline = time.time() + DEADLINE_S
    while first is None and time.time() < deadline:
        batches = await c.getmany(timeout_ms=500)
        for batch in batches.values():
            first = batch[0].offset
            break
    if first != target:
        fail(f"seek to {target} read {first}")
    await c.stop()
    print(json.dumps({"consumed": len(got), "resumed": len(resumed)}))


if __name__ == "__main__":
    try:
        if CLIENT in ("confluent", "confluent-classic"):
            confluent()
        elif CLIENT == "kafka-python":
            kafka_python()
        elif CLIENT == "aiokafka":
            asyncio.run(aiokafka_main())
        else:
            fail("unknown client")
    except SystemExit:
        raise
    except BaseException as error:  # any client exception is a failure with its message
        import traceback

        traceback.print_exc()
        fail(repr(error))
