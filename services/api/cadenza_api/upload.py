"""Streaming multipart parsing with size caps enforced while the bytes arrive.

Starlette's form parser spools every part whole before a route sees it; here each file
part goes to a temp file on disk as it streams, hashed on the way, and the request is refused
(413) the moment a cap is crossed rather than after the upload finished. Parts are never kept
in memory: sixty 8 MiB parts held in RAM cost the API ~490 MiB of resident memory.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from typing import IO

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from cadenza_api.errors import ApiError


@dataclass
class UploadedPart:
    """One file of the request, held in a temp file on disk."""

    name: str
    filename: str
    file: IO[bytes]
    size: int = 0
    sha256: str = ""
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256, repr=False)

    def read(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    def head(self, n: int = 64) -> bytes:
        self.file.seek(0)
        data = self.file.read(n)
        self.file.seek(0)
        return data

    def close(self) -> None:
        self.file.close()


@dataclass
class _PartState:
    """Where the multipart parser is: the current part's headers and its destination."""

    headers: dict[bytes, bytes] = field(default_factory=dict)
    hname: bytes = b""
    hval: bytes = b""
    part: UploadedPart | str | None = None


@dataclass
class ParsedForm:
    files: list[UploadedPart]
    fields: dict[str, str]

    def close(self) -> None:
        for f in self.files:
            f.close()


async def parse_upload(
    request: Request, *, max_total: int, max_files: int, max_field: int = 64 * 1024
) -> ParsedForm:
    """Parse a multipart body; 413 past `max_total` bytes, 400 on a malformed body."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send files as multipart/form-data, e.g. curl -F files=@song.mid",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_total:
        raise ApiError(413, "too_large", f"upload is {declared} bytes; the limit is {max_total}")

    files: list[UploadedPart] = []
    fields: dict[str, str] = {}
    state = _PartState()
    field_buf = bytearray()
    total = 0

    def on_part_begin() -> None:
        state.headers = {}
        state.part = None
        field_buf.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.hname += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.hval += data[start:end]

    def on_header_end() -> None:
        state.headers[state.hname.lower()] = state.hval
        state.hname = b""
        state.hval = b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state.headers.get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disp:
            if len(files) >= max_files:
                raise ApiError(
                    413, "too_many_files", f"at most {max_files} files per upload request"
                )
            filename = disp[b"filename"].decode("utf-8", "replace")[:500] or "unnamed"
            spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by ParsedForm.close
            part = UploadedPart(name=name, filename=filename, file=spool)
            files.append(part)
            state.part = part
        else:
            state.part = name

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = state.part
        chunk = data[start:end]
        if isinstance(part, UploadedPart):
            part.file.write(chunk)
            part._hash.update(chunk)
            part.size += len(chunk)
        else:
            field_buf.extend(chunk)
            if len(field_buf) > max_field:
                raise ApiError(413, "too_large", "a form field is larger than 64 KiB")

    def on_part_end() -> None:
        part = state.part
        if isinstance(part, UploadedPart):
            part.sha256 = part._hash.hexdigest()
            part.file.seek(0)
        elif isinstance(part, str):
            fields[part] = field_buf.decode("utf-8", "replace")

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_total:
                raise ApiError(413, "too_large", f"upload exceeds the limit of {max_total} bytes")
            parser.write(chunk)
        parser.finalize()
    except ApiError:
        for f in files:
            f.close()
        raise
    except Exception as exc:
        for f in files:
            f.close()
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from exc
    if not files:
        raise ApiError(
            400, "no_files", "no file in the request; send at least one with -F files=@song.mid"
        )
    return ParsedForm(files=files, fields=fields)
