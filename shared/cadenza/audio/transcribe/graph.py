"""basic-pitch's ONNX model, rewritten to run faster with bit-identical outputs.

ONNX Runtime's CPU convolutions compute output channels in blocks (16 with AVX-512, 8 with
AVX2). Several of basic-pitch's convolutions have 1 or 8 output channels, so most of every
block is computed and thrown away: on one core these few convolutions took 17 of the model's
24 ms per window (AVX-512). A convolution with C outputs at positions f = P·j + p equals one
with C·P outputs (channel c·P + p) at positions j: its stride is P times the original's and
its kernel is the original's shifted by p strides, the rest zeros. Interleaving the phases
again is a reshape and a transpose. Each output is then the same products summed in the same
order, with products by zero in between, which add exactly 0: ORT's direct convolution gives
bit-identical results (:class:`cadenza.audio.transcribe.session.Model` checks this once per
process, and the tests on real music). The same split along time (Q phases) serves the
1-channel convolutions. Separately, ORT broadcasts a constant of another rank, or one that
broadcasts along the innermost axis, one element at a time (0.5 ms per such Mul on a
53,000-value tensor instead of 5 µs); three constants get the same values in a shape it
broadcasts in blocks. Measured (ORT 1.31, AMD EPYC with AVX-512, one thread): 24 → 9.5 ms per
window, outputs identical; batches of 1 to 8 windows cost the same per window, 16 a little more.

The rewrite is written for one file, basic-pitch 0.4.0's nmp.onnx (checked by its SHA-256);
any other model runs as it is. The model is read and written with the minimal protobuf codec
in :mod:`cadenza.audio.transcribe.protobuf`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Final

import numpy as np

from cadenza.audio.transcribe import protobuf as pb
from cadenza.audio.transcribe.protobuf import NotTheExpectedGraph

_log = logging.getLogger(__name__)

_MODEL_SHA256: Final[str] = "2c3c1d144bfa61ad236e92e169c13535c880469a12a047d4e73451f2c059a0ec"


@dataclass(frozen=True)
class _Split:
    """How to split one convolution: its weights' shape (a check), Q time and P frequency
    phases, and its input's height (frames) and width (bins or samples)."""

    weights: tuple[int, int, int, int]
    time_phases: int
    freq_phases: int
    height: int
    width: int


_DOWNSAMPLE_INPUTS: Final[dict[int, int]] = {2: 44098, 5: 22176, 8: 11215, 11: 5734, 14: 2994}
#: Conv nodes, by their name up to the first ';', and how to split them.
_SPLITS: Final[dict[str, _Split]] = {
    "model_1/re_lu_1/Relu": _Split((8, 8, 3, 39), 1, 8, 172, 264),  # contour features, 3×39
    "model_1/contours-reduced/BiasAdd": _Split((1, 8, 5, 5), 2, 8, 172, 264),  # contour output
    "model_1/conv2d_3/BiasAdd": _Split((1, 32, 7, 3), 4, 4, 172, 88),  # note output
    # the CQT's anti-aliasing filter before each halving of the sample rate (larger octaves
    # are left: they cost little)
    **{
        f"model_1/cq_t2010v2_1/conv1d_{k}": _Split((1, 1, 1, 256), 1, 16, 1, width)
        for k, width in _DOWNSAMPLE_INPUTS.items()
    },
}
#: Mul/Add nodes (op, name up to ';') whose constant operand gets the same values in a shape
#: that ORT broadcasts quickly: old shape, new shape.
_RESHAPED_CONSTANTS: Final[dict[tuple[str, str], tuple[tuple[int, ...], tuple[int, ...]]]] = {
    # (n, 309, 172, 2) × (309, 1, 1): CQT bin lengths; ORT transposes it to broadcast inside
    # the innermost (real, imaginary) axis
    ("Mul", "model_1/cq_t2010v2_1/mul_1"): ((309, 1, 1), (309, 1, 2)),
    # (n, 172, 309, 1) × (1,) and + (1,): the batch normalisation after the log spectrum
    ("Mul", "model_1/batch_normalization/FusedBatchNormV3"): ((1,), (1, 1, 1, 1)),
    ("Add", "model_1/batch_normalization/FusedBatchNormV3"): ((1,), (1, 1, 1, 1)),
}


def faster_graph(model: bytes) -> bytes | None:
    """basic-pitch's ONNX model rewritten to run faster with identical outputs (see above), or
    None when ``model`` is not the file the rewrite was written for."""
    if hashlib.sha256(model).hexdigest() != _MODEL_SHA256:
        return None
    try:
        return rewrite(model)
    except (NotTheExpectedGraph, ValueError, IndexError, KeyError) as exc:
        _log.warning("transcription: model graph not rewritten (%s)", exc)
        return None


def rewrite(model: bytes) -> bytes:
    """The rewrite itself, without the hash check; raises when a node to rewrite is missing."""
    top = pb.read(model)
    (at,) = [i for i, (number, _, _) in enumerate(top) if number == pb.MODEL_GRAPH]
    graph = pb.read(pb.as_bytes(top[at][2]))
    constants = {}
    for number, _, value in graph:
        if number == pb.GRAPH_INITIALIZER:
            tensor = pb.read(pb.as_bytes(value))
            constants[pb.first_str(tensor, pb.TENSOR_NAME)] = tensor
    fields: list[pb.Field] = []
    added: list[bytes] = []
    done: list[str] = []
    for number, kind, value in graph:
        if number != pb.GRAPH_NODE:
            if number != pb.GRAPH_INITIALIZER:
                fields.append((number, kind, value))
            continue
        node = pb.read(pb.as_bytes(value))
        op, key = pb.first_str(node, pb.NODE_OP), pb.first_str(node, pb.NODE_NAME).split(";")[0]
        if op == "Conv" and key in _SPLITS:
            nodes, tensors = _split_conv(node, _SPLITS[key], constants, f"cadenza_split{len(done)}")
            fields += [(pb.GRAPH_NODE, pb.LEN, n) for n in nodes]
            added += tensors
            done.append(key)
        elif (op, key) in _RESHAPED_CONSTANTS:
            old, new = _RESHAPED_CONSTANTS[op, key]
            rewired, constant = _reshape_constant(
                node, old, new, constants, f"cadenza_const{len(done)}"
            )
            fields.append((pb.GRAPH_NODE, pb.LEN, pb.write(rewired)))
            added.append(constant)
            done.append(f"{op} {key}")
        else:
            fields.append((number, kind, value))
    expected = len(_SPLITS) + len(_RESHAPED_CONSTANTS)
    if len(done) != expected or len(set(done)) != expected:
        raise NotTheExpectedGraph(f"found {len(done)} of the {expected} nodes to rewrite")
    # Keep the constants still in use (ORT would warn about the others), then the new ones.
    used = {
        name
        for number, _, value in fields
        if number == pb.GRAPH_NODE
        for name in pb.strs(pb.read(pb.as_bytes(value)), pb.NODE_INPUT)
    }
    for name, tensor in constants.items():
        if name in used:
            fields.append((pb.GRAPH_INITIALIZER, pb.LEN, pb.write(tensor)))
    fields += [(pb.GRAPH_INITIALIZER, pb.LEN, t) for t in added]
    top[at] = (pb.MODEL_GRAPH, pb.LEN, pb.write(fields))
    return pb.write(top)


def _split_conv(
    node: list[pb.Field], split: _Split, constants: dict[str, list[pb.Field]], tag: str
) -> tuple[list[bytes], list[bytes]]:
    """One Conv node as Conv (the phases as channels) → Reshape → Transpose → Reshape (→ Slice
    when the output size is not a multiple of the phases): nodes and new constants."""
    inputs, outputs = pb.strs(node, pb.NODE_INPUT), pb.strs(node, pb.NODE_OUTPUT)
    ints = pb.int_attributes(node)
    if len(inputs) not in (2, 3) or len(outputs) != 1:
        raise NotTheExpectedGraph(f"{tag}: unexpected Conv inputs/outputs")
    weights = pb.array(constants[inputs[1]])
    if weights.shape != split.weights or weights.dtype != np.float32:
        raise NotTheExpectedGraph(f"{tag}: weights {weights.shape}, not {split.weights}")
    n_out, n_in, kh, kw = weights.shape
    bias = pb.array(constants[inputs[2]]) if len(inputs) == 3 else np.zeros(n_out, np.float32)
    if set(ints) - {"kernel_shape", "strides", "pads", "dilations", "group"}:
        raise NotTheExpectedGraph(f"{tag}: unexpected Conv attributes {sorted(ints)}")
    if ints.get("dilations", [1, 1]) != [1, 1] or ints.get("group", [1]) != [1]:
        raise NotTheExpectedGraph(f"{tag}: dilated or grouped Conv")
    st, sf = ints.get("strides", [1, 1])
    top_pad, left_pad, bottom_pad, right_pad = ints.get("pads", [0, 0, 0, 0])
    q, p = split.time_phases, split.freq_phases
    out_h = (split.height + top_pad + bottom_pad - kh) // st + 1
    out_w = (split.width + left_pad + right_pad - kw) // sf + 1
    rows, cols = -(-out_h // q), -(-out_w // p)  # outputs per phase
    kh2, kw2 = kh + st * (q - 1), kw + sf * (p - 1)
    phased = np.zeros((n_out, q, p, n_in, kh2, kw2), np.float32)
    for i in range(q):
        for j in range(p):
            phased[:, i, j, :, st * i : st * i + kh, sf * j : sf * j + kw] = weights
    # Zeros past the original padding only meet zero weights or outputs sliced off below.
    bottom = max(0, st * q * (rows - 1) + kh2 - split.height - top_pad)
    right = max(0, sf * p * (cols - 1) + kw2 - split.width - left_pad)
    name = outputs[0]
    full = name if (rows * q, cols * p) == (out_h, out_w) else f"{tag}_full"
    tensors = [
        pb.tensor(f"{tag}_w", phased.reshape(n_out * q * p, n_in, kh2, kw2)),
        pb.tensor(f"{tag}_b", np.repeat(bias.astype(np.float32), q * p)),
        pb.tensor(f"{tag}_shape", np.array([-1, n_out, rows * q, cols * p], np.int64)),
    ]
    nodes = [
        pb.node(
            "Conv",
            [inputs[0], f"{tag}_w", f"{tag}_b"],
            [f"{tag}_conv"],
            f"{tag}/conv",
            kernel_shape=[kh2, kw2],
            strides=[st * q, sf * p],
            pads=[top_pad, left_pad, bottom, right],
            dilations=[1, 1],
        )
    ]
    if q == 1:  # (n·C, P, rows·cols) → (n·C, rows·cols, P): ORT moves one axis quickly
        tensors.append(pb.tensor(f"{tag}_phases", np.array([-1, p, rows * cols], np.int64)))
        perm = [0, 2, 1]
    else:  # (n·C, Q, P, rows, cols) → (n·C, rows, Q, cols, P)
        tensors.append(pb.tensor(f"{tag}_phases", np.array([-1, q, p, rows, cols], np.int64)))
        perm = [0, 3, 1, 4, 2]
    nodes += [
        pb.node("Reshape", [f"{tag}_conv", f"{tag}_phases"], [f"{tag}_r"], f"{tag}/phases"),
        pb.node("Transpose", [f"{tag}_r"], [f"{tag}_t"], f"{tag}/interleave", perm=perm),
        pb.node("Reshape", [f"{tag}_t", f"{tag}_shape"], [full], f"{tag}/shape"),
    ]
    if full != name:
        tensors += [
            pb.tensor(f"{tag}_starts", np.array([0, 0], np.int64)),
            pb.tensor(f"{tag}_ends", np.array([out_h, out_w], np.int64)),
            pb.tensor(f"{tag}_axes", np.array([2, 3], np.int64)),
        ]
        slice_in = [full, f"{tag}_starts", f"{tag}_ends", f"{tag}_axes"]
        nodes.append(pb.node("Slice", slice_in, [name], f"{tag}/trim"))
    return nodes, tensors


def _reshape_constant(
    node: list[pb.Field],
    old: tuple[int, ...],
    new: tuple[int, ...],
    constants: dict[str, list[pb.Field]],
    tag: str,
) -> tuple[list[pb.Field], bytes]:
    """The node reading a copy of its constant operand broadcast to ``new``."""
    inputs = pb.strs(node, pb.NODE_INPUT)
    (k,) = [i for i, name in enumerate(inputs) if name in constants]
    value = pb.array(constants[inputs[k]])
    if value.shape != old:
        raise NotTheExpectedGraph(f"{tag}: constant {value.shape}, not {old}")
    out: list[pb.Field] = []
    seen = 0
    for number, kind, field in node:
        if number == pb.NODE_INPUT:
            field = tag.encode() if seen == k else field
            seen += 1
        out.append((number, kind, field))
    return out, pb.tensor(tag, np.ascontiguousarray(np.broadcast_to(value, new)))
