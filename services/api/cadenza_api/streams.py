"""Streaming a stored object to the client as a download, without holding it in memory."""

from __future__ import annotations

from fastapi.responses import StreamingResponse

from cadenza.storage import ObjectNotFound, ObjectStore
from cadenza_api.errors import ApiError


def stream_object(
    store: ObjectStore,
    key: str,
    *,
    filename: str,
    media_type: str = "application/octet-stream",
    missing: tuple[int, str, str] = (404, "not_found", "the stored object is missing"),
) -> StreamingResponse:
    """A download of `key`; `missing` is the (status, code, message) when it does not exist."""
    try:
        size = store.size(key)
    except ObjectNotFound as exc:
        raise ApiError(*missing) from exc
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in filename)[:100] or "file"
    return StreamingResponse(
        store.iter_chunks(key),
        media_type=media_type,
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{safe}"',
        },
    )
