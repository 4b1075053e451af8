"""An independent reader of TensorBoard event files (for the tests): the TFRecord framing and
the protobuf wire format decoded by hand, so the writer's library does not check itself."""

import struct
from pathlib import Path



def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def fields_of(message: bytes):
    """(field number, wire type, value) of a protobuf message: ints, doubles/floats as raw bytes."""
    at = 0
    while at < len(message):
        key, at = _varint(message, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(message, at)
        elif wire == 1:
            value, at = message[at:at + 8], at + 8
        elif wire == 5:
            value, at = message[at:at + 4], at + 4
        elif wire == 2:
            size, at = _varint(message, at)
            value, at = message[at:at + size], at + size
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        yield number, wire, value


def events(path: Path):
    """Each Event of a TensorBoard file as (step, [(field, wire, value), ...]).

    TFRecord framing: uint64 length, uint32 crc, data, uint32 crc. Event: step = field 2.
    """
    raw, at = path.read_bytes(), 0
    while at < len(raw):
        (length,) = struct.unpack("<Q", raw[at:at + 8])
        fields = list(fields_of(raw[at + 12:at + 12 + length]))
        at += 12 + length + 4
        yield next((v for n, _, v in fields if n == 2), 0), fields
    assert at == len(raw), f"{path}: trailing bytes"


def read_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` from every event file in ``folder``.

    Event: summary = field 5; Summary: value = 1 (repeated); Value: tag = 1, simple_value = 2.
    """
    scalars: dict[str, dict[int, float]] = {}
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event file in {folder}"
    for path in files:
        for step, fields in events(path):
            for number, _, summary in fields:
                if number != 5:
                    continue
                for _, _, value in fields_of(summary):
                    parts = {n: v for n, _, v in fields_of(value)}
                    scalars.setdefault(parts[1].decode(), {})[step] = struct.unpack("<f", parts[2])[0]
    return scalars
