"""Fuzzing the upload ingest (:func:`cadenza.ingest.check_all`) from real files.

Seeds are real uploads (Bach chorales, a synthetic MIDI, a WAV, a zip of both); hypothesis
truncates them, flips bits and splices bytes. Whatever comes in must end as accepted files
(which are then stored) or a clean :class:`Rejected` with a 4xx status: any other exception, a
hang or a dead process is a bug. Bounded for the suite (~100 examples); set
``CADENZA_FUZZ_EXAMPLES=5000`` to run longer; such a run saves each crasher under
tests/fixtures/fuzz/, which :func:`test_saved_crashers_stay_fixed` replays for good.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import struct
import tempfile
import wave
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cadenza.ingest import Incoming, Rejected, check_all, release
from cadenza.midi.load import MidiLimits
from cadenza.storage import ObjectStore, blob_key
from tests.support.music import bach_paths, midi_bytes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fuzz"
LONG_RUN = int(os.environ.get("CADENZA_FUZZ_EXAMPLES", "0"))
LIMITS = MidiLimits(max_bytes=1 << 20, timeout_s=5.0)
MAX_UNPACKED = 4 << 20


def _wav(seconds: float = 0.2, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        n = int(seconds * rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 8))) for i in range(n)))
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _seeds() -> list[bytes]:
    chorales = [p.read_bytes() for p in bach_paths()[:2]]
    synthetic = midi_bytes([(i * 120, 240, 48 + i % 36, 90) for i in range(40)])
    wav = _wav()
    return [
        *chorales,
        synthetic,
        wav,
        _zip({"a.mid": synthetic, "b.wav": wav, "x/c.mid": chorales[0]}),
    ]


SEEDS = _seeds()


def ingest(data: bytes, store: ObjectStore) -> list[str]:
    """The upload path without HTTP: validate, then store what was accepted; keys stored.

    Raises Rejected (4xx) for a refused input; anything else escaping is a bug.
    """
    with tempfile.TemporaryFile() as body:
        body.write(data)
        body.seek(0)
        item = Incoming("fuzz.bin", body, len(data), hashlib.sha256(data).hexdigest())
        checked = check_all([item], midi_limits=LIMITS, max_unpacked=MAX_UNPACKED)
        try:
            keys = []
            for c in checked:
                key = blob_key(c.incoming.sha256, c.format)
                c.incoming.body.seek(0)
                store.put(key, c.incoming.body)
                keys.append(key)
            return keys
        finally:
            release(checked, [item])


def _mutate(seed: bytes, cut: float, flips: list[tuple[float, int]], splice: bytes) -> bytes:
    data = bytearray(seed[: max(0, int(len(seed) * cut))] if cut < 1 else seed)
    for where, bit in flips:
        if data:
            data[int(where * (len(data) - 1))] ^= 1 << bit
    if splice and data:
        at = int(len(data) * flips[0][0]) if flips else len(data) // 2
        data[at:at] = splice
    return bytes(data)


def _check_one(data: bytes, store: ObjectStore) -> None:
    try:
        ingest(data, store)
    except Rejected as exc:
        assert 400 <= exc.status < 500 and exc.code and exc.message
    except Exception:
        if LONG_RUN:  # keep the input that broke ingest, for the replay test below
            FIXTURES.mkdir(parents=True, exist_ok=True)
            name = f"crash-{hashlib.sha256(data).hexdigest()[:16]}.bin"
            (FIXTURES / name).write_bytes(data)
        raise


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ObjectStore:
    from obstore.store import LocalStore

    root = tmp_path_factory.mktemp("fuzz-objects")
    return ObjectStore(LocalStore(str(root)), f"file://{root}")


def test_seeds_are_accepted(store: ObjectStore) -> None:
    for seed in SEEDS:
        assert ingest(seed, store)


@settings(
    max_examples=LONG_RUN or 150,
    deadline=None,
    derandomize=not LONG_RUN,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    seed=st.sampled_from(SEEDS),
    cut=st.one_of(st.just(1.0), st.floats(0, 1)),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), max_size=8),
    splice=st.one_of(st.just(b""), st.binary(max_size=64)),
)
def test_ingest_never_fails_unexpectedly(
    store: ObjectStore, seed: bytes, cut: float, flips: list[tuple[float, int]], splice: bytes
) -> None:
    _check_one(_mutate(seed, cut, flips, splice), store)


@pytest.mark.parametrize(
    "path", sorted(FIXTURES.glob("*.bin")) if FIXTURES.is_dir() else [], ids=lambda p: p.name
)
def test_saved_crashers_stay_fixed(store: ObjectStore, path: Path) -> None:
    _check_one(path.read_bytes(), store)
