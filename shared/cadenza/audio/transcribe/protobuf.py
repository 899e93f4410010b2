"""The few parts of the protocol-buffer wire format and of ONNX's messages that the graph rewrite
(:mod:`cadenza.audio.transcribe.graph`) reads and writes, so it needs no ``onnx`` package.

A message is kept as its list of fields in order, ``(number, wire type, value)``; a nested
message stays bytes until it is parsed with :func:`read`, so writing back what was read gives
the same bytes. The field numbers are those of ``onnx/onnx.proto`` in the ONNX repository.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import numpy as np

#: One field: its number, its wire type and its value (varints as ints, the rest as bytes).
Field = tuple[int, int, int | bytes]

VARINT, I64, LEN, I32 = 0, 1, 2, 5  # wire types
MODEL_GRAPH: Final[int] = 7  # ModelProto.graph
GRAPH_NODE, GRAPH_INITIALIZER = 1, 5  # GraphProto.node, .initializer
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP, NODE_ATTRIBUTE = 1, 2, 3, 4, 5  # NodeProto
TENSOR_NAME: Final[int] = 8  # TensorProto.name
_ATTR_NAME, _ATTR_INT, _ATTR_INTS, _ATTR_TYPE = 1, 3, 8, 20  # AttributeProto
_ATTR_TYPE_INT, _ATTR_TYPE_INTS = 2, 7  # AttributeProto.AttributeType
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_RAW = 1, 2, 9  # TensorProto
_TENSOR_DTYPES: Final[dict[int, str]] = {1: "<f4", 7: "<i8"}  # FLOAT, INT64


class NotTheExpectedGraph(Exception):
    """The model does not look the way the rewrite expects; it is then left as it is."""


def read(data: bytes) -> list[Field]:
    """One message's fields in order: (number, wire type, value), with varints as ints and
    everything else as the raw bytes (a nested message is parsed only when asked for)."""
    fields: list[Field] = []
    pos, end = 0, len(data)
    while pos < end:
        key, pos = varint(data, pos)
        number, kind = key >> 3, key & 7
        value: int | bytes
        if kind == VARINT:
            value, pos = varint(data, pos)
        elif kind == LEN:
            size, pos = varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif kind in (I64, I32):
            size = 8 if kind == I64 else 4
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {kind}")
        if pos > end:
            raise ValueError("truncated protobuf message")
        fields.append((number, kind, value))
    return fields


def write(fields: Iterable[Field]) -> bytes:
    """A message's bytes from its fields (the inverse of :func:`read`)."""
    out = bytearray()
    for number, kind, value in fields:
        out += _uvarint(number << 3 | kind)
        if kind == VARINT:
            out += _uvarint(int(value) & 0xFFFF_FFFF_FFFF_FFFF)  # int64: two's complement
        else:
            data = as_bytes(value)
            if kind == LEN:
                out += _uvarint(len(data))
            out += data
    return bytes(out)


def varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def as_bytes(value: int | bytes) -> bytes:
    """A length-delimited field's value; a varint there means the message is not what we know."""
    if not isinstance(value, bytes):
        raise NotTheExpectedGraph("a nested message where a number was expected")
    return value


def strs(fields: list[Field], number: int) -> list[str]:
    """A repeated string field."""
    return [as_bytes(v).decode() for n, _, v in fields if n == number]


def first_str(fields: list[Field], number: int) -> str:
    """A string field; empty when absent, as protobuf defaults it."""
    found = strs(fields, number)
    return found[0] if found else ""


def _ints(fields: list[Field], number: int) -> list[int]:
    """A repeated int64 field, packed or not."""
    values: list[int] = []
    for n, _, value in fields:
        if n != number:
            continue
        if isinstance(value, int):
            values.append(value)
        else:
            pos = 0
            while pos < len(value):
                v, pos = varint(value, pos)
                values.append(v)
    return [v - (1 << 64) if v >= 1 << 63 else v for v in values]


def int_attributes(node: list[Field]) -> dict[str, list[int]]:
    """A node's attributes, all of which must be INT or INTS."""
    out: dict[str, list[int]] = {}
    for number, _, value in node:
        if number != NODE_ATTRIBUTE:
            continue
        attribute = read(as_bytes(value))
        name = first_str(attribute, _ATTR_NAME)
        kind = _ints(attribute, _ATTR_TYPE)
        if kind == [_ATTR_TYPE_INTS]:
            out[name] = _ints(attribute, _ATTR_INTS)
        elif kind == [_ATTR_TYPE_INT]:
            out[name] = _ints(attribute, _ATTR_INT)
        else:
            raise NotTheExpectedGraph(f"attribute {name} of type {kind}")
    return out


def array(tensor: list[Field]) -> np.ndarray:
    """A constant's value; only the raw little-endian layout the bundled model uses."""
    dtype = _TENSOR_DTYPES.get(next(iter(_ints(tensor, _TENSOR_TYPE)), 0))
    raw = [v for n, _, v in tensor if n == _TENSOR_RAW]
    if dtype is None or len(raw) != 1:
        raise NotTheExpectedGraph(f"constant {first_str(tensor, TENSOR_NAME)} in another layout")
    dims = _ints(tensor, _TENSOR_DIMS)
    return np.frombuffer(as_bytes(raw[0]), dtype=dtype).reshape(dims).astype(dtype[1:])


def tensor(name: str, value: np.ndarray) -> bytes:
    """A TensorProto named ``name`` holding ``value`` (float32 or int64) as raw data."""
    (dtype,) = [k for k, v in _TENSOR_DTYPES.items() if np.dtype(v) == value.dtype]
    fields: list[Field] = [(_TENSOR_DIMS, VARINT, int(d)) for d in value.shape]
    fields += [(_TENSOR_TYPE, VARINT, dtype), (TENSOR_NAME, LEN, name.encode())]
    fields.append(
        (
            _TENSOR_RAW,
            LEN,
            np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes(),
        )
    )
    return write(fields)


def node(op: str, inputs: list[str], outputs: list[str], name: str, **ints: list[int]) -> bytes:
    """A NodeProto running ``op``, with INTS attributes."""
    fields: list[Field] = [(NODE_INPUT, LEN, i.encode()) for i in inputs]
    fields += [(NODE_OUTPUT, LEN, o.encode()) for o in outputs]
    fields += [(NODE_NAME, LEN, name.encode()), (NODE_OP, LEN, op.encode())]
    for key, values in ints.items():
        attribute: list[Field] = [(_ATTR_NAME, LEN, key.encode())]
        attribute.append((_ATTR_TYPE, VARINT, _ATTR_TYPE_INTS))
        attribute += [(_ATTR_INTS, VARINT, v) for v in values]
        fields.append((NODE_ATTRIBUTE, LEN, write(attribute)))
    return write(fields)
