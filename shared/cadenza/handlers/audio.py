"""`audio` jobs: convert, crop or transcribe a dataset's audio files into new dataset files.

Outputs are added to the same dataset, each linked to its source file, and become visible
together in the job's final commit. Blobs are content-addressed, so a rerun of the job writes
the same keys instead of duplicates.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cadenza.db.models import File
from cadenza.ingest import Checked, Incoming, Rejected, check_file, store_files
from cadenza.midi.load import MidiLimits
from cadenza.runner import JobContext, Outcome, UserError
from cadenza.storage import sha256_of


def _incoming(name: str, data: bytes) -> Incoming:
    return Incoming(filename=name, body=io.BytesIO(data), size=len(data), sha256=sha256_of([data]))


def run(ctx: JobContext) -> Outcome:
    from cadenza.audio.convert import convert, crop_interval, crop_positions

    p = ctx.params
    op = p["operation"]
    if op == "render":
        return _render(ctx)
    with ctx.session() as s:
        sources = list(
            s.scalars(select(File).where(File.id.in_(p["file_ids"])).order_by(File.created_at))
        )
        s.expunge_all()
    if not sources:
        raise UserError("none of the requested audio files exist any more")

    outputs: list[tuple[str, Checked]] = []  # (source file id, checked output)
    with tempfile.TemporaryDirectory(prefix="cadenza-audio-") as tmp:
        work = Path(tmp)
        paths: list[Path] = []
        for i, f in enumerate(sources):
            ctx.check_cancel()
            path = work / f"in-{i}.{f.format}"
            path.write_bytes(ctx.store.get(f.object_key))
            paths.append(path)
        stem = lambda f: Path(f.name).stem[:80] or "audio"  # noqa: E731

        try:
            if op == "transcribe":
                from cadenza.audio.transcribe import TranscribeParams, transcribe

                params = TranscribeParams.model_validate(p.get("transcribe") or {})

                def progress(fraction: float, message: str) -> None:
                    ctx.check_cancel()
                    ctx.progress(0.9 * fraction, message)

                midis = transcribe(paths, params, progress=progress)
                for f, midi in zip(sources, midis, strict=True):
                    outputs.append((f.id, _check(_incoming(f"{stem(f)}.mid", midi))))
            else:
                for n, (f, path) in enumerate(zip(sources, paths, strict=True)):
                    ctx.check_cancel()
                    ctx.progress(0.9 * n / len(sources), f"{op} {f.name}")
                    out_dir = work / f"out-{n}"
                    out_dir.mkdir()
                    if op == "convert":
                        c = p.get("convert") or {}
                        dst = out_dir / "converted.wav"
                        convert(
                            path,
                            dst,
                            sample_rate=c.get("sample_rate", 16000),
                            mono=c.get("mono", True),
                        )
                        made = [(dst, f"{stem(f)}.wav")]
                    else:
                        c = p.get("crop") or {}
                        if c.get("positions"):
                            segs = crop_positions(path, out_dir, c["positions"])
                        else:
                            segs = crop_interval(
                                path,
                                out_dir,
                                interval_s=c.get("interval_s", 30.0),
                                min_tail_s=c.get("min_tail_s", 0.0),
                            )
                        made = [
                            (sg.path, f"{stem(f)}-{sg.start_s:09.3f}-{sg.end_s:09.3f}.wav")
                            for sg in segs
                        ]
                    for out_path, name in made:
                        checked = _check(_incoming(name, out_path.read_bytes()))
                        if op == "crop":
                            checked.meta = {**checked.meta, **_span(name)}
                        outputs.append((f.id, checked))
        except ValueError as exc:
            raise UserError(str(exc)) from exc

        ctx.progress(0.95, f"storing {len(outputs)} file(s)", force=True)

        def finalize(s: Session) -> dict[str, Any]:
            ids: list[str] = []
            for source_id, checked in outputs:
                rows = store_files(
                    session=s,
                    store=ctx.store,
                    owner_id=ctx.owner_id,
                    dataset_id=p["dataset_id"],
                    checked=[checked],
                    job_id=ctx.job_id,
                    source_file_id=source_id,
                )
                ids.extend(r.id for r in rows)
            return {"file_ids": ids}

        return Outcome(finalize, message=f"{op}: {len(outputs)} file(s) from {len(sources)}")


def _check(item: Incoming) -> Checked:
    """Validate an output like an upload, which also measures it for the file's metadata."""
    try:
        return check_file(item, midi_limits=MidiLimits())
    except Rejected as exc:
        raise UserError(f"an output failed validation: {exc.message}") from exc


def _span(name: str) -> dict[str, float]:
    start, end = name.rsplit(".", 1)[0].rsplit("-", 2)[1:]
    return {"crop_start_s": float(start), "crop_end_s": float(end)}


def _render(ctx: JobContext) -> Outcome:
    """Render MIDI targets ({sha256, key}) to MP3, WAV and a piano roll, cached by content."""
    from cadenza.render import render_all

    targets = ctx.params["targets"]
    errors: dict[str, dict[str, str]] = {}
    for i, t in enumerate(targets):
        ctx.check_cancel()
        ctx.progress(i / len(targets), f"rendering {i + 1}/{len(targets)}", force=True)
        failed = render_all(ctx.store, ctx.store.get(t["key"]), t["sha256"])
        if failed:
            errors[t["sha256"]] = failed
    if errors and len(errors) == len(targets):
        first = next(iter(errors.values()))
        raise UserError(f"rendering failed: {'; '.join(f'{k}: {v}' for k, v in first.items())}")
    return Outcome(lambda s: {"render_errors": errors}, message=f"rendered {len(targets)}")
