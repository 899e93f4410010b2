"""Turn uploaded bytes into stored, validated dataset files — all of them or none.

The type of a file comes from its content (magic bytes, then a real parse or probe), never
from its name. Every file of a request is validated before the first byte is stored; if the
SQL commit then fails, the objects this request wrote are removed again, so a rejected or
failed upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import lzma
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, Any

from sqlalchemy.orm import Session

from cadenza.db.models import File
from cadenza.midi.load import MidiLimits, MidiRejected, inspect_midi, sniff_midi
from cadenza.storage import CHUNK, ObjectStore, blob_key
from cadenza.sweep import schedule, sweep

ZIP_MAGIC = b"PK\x03\x04"
MAX_ZIP_ENTRIES = 2000
MAX_ZIP_UNCOMPRESSED = 2 * 1024 * 1024 * 1024
MAX_ZIP_RATIO = 200  # a MIDI/audio member compressing better than 200:1 is a bomb
#: What reading a damaged zip can raise besides BadZipFile: a corrupt deflate stream (zlib), a
#: broken LZMA or bzip2 one, an encrypted member (RuntimeError), a bad header field.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    OSError,
    ValueError,
    EOFError,
    NotImplementedError,
    RuntimeError,
)
#: Bytes of all files of one request once zips are unpacked, when the caller sets no limit.
DEFAULT_MAX_UNPACKED = 1024 * 1024 * 1024


class Rejected(ValueError):
    """A file we refuse: `status` is the HTTP status, `code` a stable machine code."""

    def __init__(self, status: int, code: str, message: str, filename: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.filename = filename


@dataclass
class Incoming:
    """One file as received: a name for display and a readable, seekable body."""

    filename: str
    body: IO[bytes]
    size: int
    sha256: str

    def read(self) -> bytes:
        self.body.seek(0)
        data = self.body.read()
        self.body.seek(0)
        return data

    def head(self, n: int = 64) -> bytes:
        self.body.seek(0)
        data = self.body.read(n)
        self.body.seek(0)
        return data


@dataclass
class Checked:
    incoming: Incoming
    kind: str
    format: str
    meta: dict[str, Any] = field(default_factory=dict)


def _audio_kind(head: bytes) -> str | None:
    try:
        from cadenza.audio.probe import sniff_audio
    except ImportError:  # the audio extra is not installed in this process
        return None
    return sniff_audio(head)


def _zip_members(item: Incoming) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """The zip's file members (no folders, dot files or macOS metadata), count-capped."""
    try:
        zf = zipfile.ZipFile(item.body)
    except _ZIP_ERRORS as exc:
        raise Rejected(400, "bad_zip", f"{item.filename}: not a readable zip ({exc})") from exc
    infos = [i for i in zf.infolist() if not i.is_dir()]
    infos = [i for i in infos if not PurePosixPath(i.filename).name.startswith(".")]
    infos = [i for i in infos if "__MACOSX" not in i.filename]
    if len(infos) > MAX_ZIP_ENTRIES:
        raise Rejected(
            413, "zip_too_many_entries", f"{item.filename}: more than {MAX_ZIP_ENTRIES} files"
        )
    total = sum(i.file_size for i in infos)
    if total > MAX_ZIP_UNCOMPRESSED:
        raise Rejected(413, "zip_too_large", f"{item.filename}: unpacks to {total} bytes")
    for info in infos:
        if info.compress_size and info.file_size / max(info.compress_size, 1) > MAX_ZIP_RATIO:
            raise Rejected(
                413, "zip_bomb", f"{item.filename}: member compresses {MAX_ZIP_RATIO}:1 or better"
            )
    return zf, infos


def _spool_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, zip_name: str) -> Incoming:
    """One member copied to a temp file on disk in chunks, hashed on the way.

    Never held whole in memory: a member may be hundreds of MiB, and a request many of them.
    At most the declared size is read, so a member that lies about its size cannot grow.
    """
    body = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the Incoming, closed by the caller
    digest = hashlib.sha256()
    size = 0
    try:
        with zf.open(info) as fh:
            while chunk := fh.read(min(CHUNK, info.file_size + 1 - size)):
                body.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if size > info.file_size:
                    break
    except _ZIP_ERRORS as exc:
        body.close()
        raise Rejected(
            400, "bad_zip", f"{zip_name}: member {info.filename!r} cannot be read ({exc})"
        ) from exc
    except BaseException:
        body.close()
        raise
    if size != info.file_size:
        body.close()
        raise Rejected(400, "bad_zip", f"{zip_name}: member size does not match")
    body.seek(0)
    name = PurePosixPath(info.filename).name[:500] or "unnamed"
    return Incoming(filename=name, body=body, size=size, sha256=digest.hexdigest())


def close_all(items: Iterable[Incoming]) -> None:
    """Close the bodies (and so delete the temp files) of files this module opened."""
    for item in items:
        item.body.close()


def _kind(name: str, head: bytes, size: int, midi_limits: MidiLimits) -> str:
    """ "midi" or an audio format, from the first bytes; Rejected for anything else or a MIDI
    file over its byte limit. Cheap, so a zip member is judged before it is unpacked."""
    if sniff_midi(head):
        if size > midi_limits.max_bytes:
            raise Rejected(
                413, "too_large", f"{name}: MIDI files are limited to {midi_limits.max_bytes} bytes"
            )
        return "midi"
    audio = _audio_kind(head)
    if audio is not None:
        return audio
    raise Rejected(
        415,
        "unsupported_type",
        f"{name}: not a MIDI, audio (wav, mp3, aac/m4a, flac, ogg) or zip file "
        "(recognised by content, not by name)",
    )


def check_file(item: Incoming, *, midi_limits: MidiLimits) -> Checked:
    """Decide what `item` is by content and validate it; raise Rejected otherwise."""
    if item.size == 0:
        raise Rejected(400, "empty_file", f"{item.filename}: the file is empty")
    kind = _kind(item.filename, item.head(64), item.size, midi_limits)
    if kind != "midi":
        return _check_audio(item, kind)
    try:
        info = inspect_midi(item.read(), midi_limits)
    except MidiRejected as exc:
        status = 413 if exc.code in {"too_large", "too_many_notes", "too_many_tracks"} else 422
        raise Rejected(status, f"midi_{exc.code}", f"{item.filename}: {exc.message}") from exc
    return Checked(item, "midi", "mid", info.to_dict())


def _precheck_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, zip_name: str, midi_limits: MidiLimits
) -> None:
    """Refuse a member by its first bytes before unpacking it to disk."""
    if info.file_size == 0:
        return  # check_file says "empty" with the member's name
    try:
        with zf.open(info) as fh:
            head = fh.read(64)
    except _ZIP_ERRORS as exc:
        raise Rejected(
            400, "bad_zip", f"{zip_name}: member {info.filename!r} cannot be read ({exc})"
        ) from exc
    name = PurePosixPath(info.filename).name[:500] or "unnamed"
    _kind(f"{zip_name}: {name}", head, info.file_size, midi_limits)


def _check_audio(item: Incoming, fmt: str) -> Checked:
    from pathlib import Path

    from cadenza.audio.probe import AudioLimits, AudioRejected, probe_audio

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload.{fmt}"
        item.body.seek(0)
        with path.open("wb") as out:
            shutil.copyfileobj(item.body, out, CHUNK)
        item.body.seek(0)
        try:
            info = probe_audio(path, AudioLimits())
        except AudioRejected as exc:
            status = 413 if exc.code in {"too_long", "too_large"} else 422
            raise Rejected(status, f"audio_{exc.code}", f"{item.filename}: {exc}") from exc
    meta = info.to_dict() if hasattr(info, "to_dict") else dict(vars(info))
    return Checked(item, "audio", str(meta.get("format") or fmt), meta)


def _over(total: int, limit: int) -> Rejected:
    return Rejected(
        413,
        "request_too_large",
        f"the files of this request unpack to {total} bytes; the limit is {limit} "
        "(max_request_unpacked_bytes): split the upload into several requests",
    )


def check_all(
    items: Iterable[Incoming],
    *,
    midi_limits: MidiLimits,
    max_unpacked: int = DEFAULT_MAX_UNPACKED,
) -> list[Checked]:
    """Validate every file (zips expanded) before anything is stored.

    ``max_unpacked`` caps the bytes of all files of the request together, zips counted by
    what they unpack to (their declared sizes, checked before a byte is unpacked): the cap
    per zip alone let a request of several small zip bombs fill the disk and memory.
    Members unpacked here are temp files the caller releases with :func:`release`.
    """
    items = list(items)
    zips = [(it, _zip_members(it)) for it in items if it.head(4) == ZIP_MAGIC]
    total = sum(it.size for it in items if it.head(4) != ZIP_MAGIC)
    total += sum(i.file_size for _, (_, infos) in zips for i in infos)
    if total > max_unpacked:
        raise _over(total, max_unpacked)
    by_zip = {id(it): zz for it, zz in zips}
    checked: list[Checked] = []
    try:
        for item in items:
            if id(item) not in by_zip:
                checked.append(check_file(item, midi_limits=midi_limits))
                continue
            zf, infos = by_zip[id(item)]
            if not infos:
                raise Rejected(400, "empty_zip", f"{item.filename}: the zip holds no files")
            for info in infos:
                _precheck_member(zf, info, item.filename, midi_limits)
                member = _spool_member(zf, info, item.filename)
                try:
                    checked.append(check_file(member, midi_limits=midi_limits))
                except BaseException:
                    member.body.close()
                    raise
    except BaseException:
        release(checked, items)
        raise
    return checked


def release(checked: Iterable[Checked], items: Iterable[Incoming] = ()) -> None:
    """Delete the temp files :func:`check_all` unpacked (the request's own parts stay open:
    their owner closes them)."""
    mine = {id(it) for it in items}
    close_all(c.incoming for c in checked if id(c.incoming) not in mine)


def store_files(
    *,
    session: Session,
    store: ObjectStore,
    owner_id: str,
    dataset_id: str,
    checked: list[Checked],
    job_id: str | None = None,
    source_file_id: str | None = None,
) -> list[File]:
    """Put blobs (content-addressed) and add File rows; the caller commits.

    Returns the rows. Use `cleanup_new_blobs` with the keys written if the commit fails.
    """
    rows: list[File] = []
    for c in checked:
        key = blob_key(c.incoming.sha256, c.format)
        # Written even when the key exists (same bytes, same key): the write makes the object
        # young again, and the sweep never deletes a young object, so a delete of another row
        # with these bytes cannot remove the blob before this upload commits its row.
        c.incoming.body.seek(0)
        store.put(key, c.incoming.body)  # streamed from its temp file, not read whole
        row = File(
            owner_id=owner_id,
            dataset_id=dataset_id,
            name=c.incoming.filename,
            kind=c.kind,
            format=c.format,
            sha256=c.incoming.sha256,
            size=c.incoming.size,
            object_key=key,
            meta=c.meta,
            job_id=job_id,
            source_file_id=source_file_id,
        )
        session.add(row)
        rows.append(row)
    session.flush()
    return rows


def cleanup_unreferenced(
    *, session: Session, store: ObjectStore, keys: Iterable[str], grace_s: float
) -> None:
    """After a failed commit: hand the blobs this request wrote to the sweep.

    Not a direct delete: another upload of the same bytes may have written the same blob and
    not committed yet, and a check "no row references it" cannot see that row. The sweep
    checks references when it runs and leaves young objects (this one included) for later.
    """
    todo = sorted(set(keys))
    if not todo:
        return
    session.rollback()
    ids = schedule(session, todo)
    session.commit()
    sweep(session, store, grace_s=grace_s, ids=ids)
