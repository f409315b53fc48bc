"""Regenerates the captured batches in this folder with kafka-python's own batch encoder.

The files are checked in, so the tests need no Python; this script records how they were made:

    python3 -m venv venv && venv/bin/pip install kafka-python lz4 zstandard
    venv/bin/python generate.py

Each `NAME.bin` is one RecordBatch v2 exactly as kafka-python's producer sends it (base offset 0,
the partition leader epoch as the client leaves it); `NAME.json` lists what it must decode to.
"""

import json
import pathlib

import kafka
from kafka.record.default_records import DefaultRecordBatchBuilder

HERE = pathlib.Path(__file__).parent
CODECS = {"none": 0, "gzip": 1, "lz4": 3, "zstd": 4}
BASE_TS = 1_700_000_000_000


def records(count):
    out = []
    for i in range(count):
        key = None if i % 5 == 4 else f"key-{i % 7}".encode()
        value = None if i % 11 == 10 else (f"value {i} " * (1 + i % 4)).encode()
        headers = [("trace", f"t{i}".encode())] if i % 3 == 0 else []
        if i % 6 == 0:
            headers.append(("empty", None))
        out.append((BASE_TS + 3 * i - (i % 2), key, value, headers))
    return out


def write(name, codec, count, producer=(-1, -1, -1), transactional=False):
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=CODECS[codec],
        is_transactional=transactional,
        producer_id=producer[0],
        producer_epoch=producer[1],
        base_sequence=producer[2],
        batch_size=1 << 20,
    )
    expected = []
    for offset, (ts, key, value, headers) in enumerate(records(count)):
        assert builder.append(offset, ts, key, value, headers) is not None
        expected.append(
            {
                "offset_delta": offset,
                "timestamp": ts,
                "key": None if key is None else key.decode(),
                "value": None if value is None else value.decode(),
                "headers": [[k, None if v is None else v.decode()] for k, v in headers],
            }
        )
    (HERE / f"{name}.bin").write_bytes(bytes(builder.build()))
    meta = {
        "client": f"kafka-python {kafka.__version__}",
        "codec": codec,
        "producer_id": producer[0],
        "producer_epoch": producer[1],
        "base_sequence": producer[2],
        "transactional": transactional,
        "records": expected,
    }
    records_json = ",\n".join(json.dumps(r, separators=(",", ":")) for r in meta.pop("records"))
    head = json.dumps(meta, separators=(",", ":"))[:-1]
    (HERE / f"{name}.json").write_text(f'{head},"records":[\n{records_json}\n]}}\n')


write("plain", "none", 25)
write("idempotent", "none", 40, producer=(4711, 3, 120))
write("transactional", "none", 3, producer=(9, 0, 0), transactional=True)
write("gzip", "gzip", 60)
write("lz4", "lz4", 600)
write("zstd", "zstd", 300, producer=(77, 1, 5))
