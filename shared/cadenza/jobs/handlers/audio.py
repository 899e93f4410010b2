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

from cadenza.audio.params import AudioParams
from cadenza.db.models import File
from cadenza.ingest import Checked, Incoming, Rejected, check_file, store_files
from cadenza.jobs.context import JobContext, Outcome, UserError
from cadenza.midi.load import MidiLimits
from cadenza.storage import sha256_of

Output = tuple[str, Checked]  # (source file id, checked output)


def run(ctx: JobContext) -> Outcome:
    p = AudioParams.model_validate(ctx.params)
    with ctx.session() as s:
        sources = list(
            s.scalars(select(File).where(File.id.in_(p.file_ids)).order_by(File.created_at))
        )
        s.expunge_all()
    if not sources:
        raise UserError("none of the requested audio files exist any more")

    with tempfile.TemporaryDirectory(prefix="cadenza-audio-") as tmp:
        work = Path(tmp)
        paths: list[Path] = []
        for i, f in enumerate(sources):
            ctx.check_cancel()
            path = work / f"in-{i}.{f.format}"
            path.write_bytes(ctx.store.get(f.object_key))
            paths.append(path)
        try:
            if p.operation == "transcribe":
                outputs = _transcribe(ctx, p, sources, paths)
            else:
                outputs = _convert_or_crop(ctx, p, sources, paths, work)
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
                dataset_id=p.dataset_id,
                checked=[checked],
                job_id=ctx.job_id,
                source_file_id=source_id,
            )
            ids.extend(r.id for r in rows)
        return {"file_ids": ids}

    return Outcome(finalize, message=f"{p.operation}: {len(outputs)} file(s) from {len(sources)}")


def _transcribe(
    ctx: JobContext, p: AudioParams, sources: list[File], paths: list[Path]
) -> list[Output]:
    from cadenza.audio.transcribe import transcribe

    def progress(fraction: float, message: str) -> None:
        ctx.check_cancel()
        ctx.progress(0.9 * fraction, message)

    midis = transcribe(paths, p.transcribe, progress=progress)
    return [(f.id, _check(f"{_stem(f)}.mid", midi)) for f, midi in zip(sources, midis, strict=True)]


def _convert_or_crop(
    ctx: JobContext, p: AudioParams, sources: list[File], paths: list[Path], work: Path
) -> list[Output]:
    from cadenza.audio.convert import convert, crop_interval, crop_positions

    outputs: list[Output] = []
    for n, (f, path) in enumerate(zip(sources, paths, strict=True)):
        ctx.check_cancel()
        ctx.progress(0.9 * n / len(sources), f"{p.operation} {f.name}")
        out_dir = work / f"out-{n}"
        out_dir.mkdir()
        if p.operation == "convert":
            dst = out_dir / "converted.wav"
            convert(path, dst, sample_rate=p.convert.sample_rate, mono=p.convert.mono)
            outputs.append((f.id, _check(f"{_stem(f)}.wav", dst.read_bytes())))
            continue
        crop = p.crop
        if crop.positions:
            segments = crop_positions(path, out_dir, crop.positions)
        else:
            segments = crop_interval(
                path, out_dir, interval_s=crop.interval_s, min_tail_s=crop.min_tail_s
            )
        for seg in segments:
            checked = _check(
                f"{_stem(f)}-{seg.start_s:09.3f}-{seg.end_s:09.3f}.wav", seg.path.read_bytes()
            )
            # The span as the file name spells it (milliseconds), so name and metadata agree.
            span = {"crop_start_s": round(seg.start_s, 3), "crop_end_s": round(seg.end_s, 3)}
            checked.meta = {**checked.meta, **span}
            outputs.append((f.id, checked))
    return outputs


def _stem(f: File) -> str:
    return Path(f.name).stem[:80] or "audio"


def _check(name: str, data: bytes) -> Checked:
    """Validate an output like an upload, which also measures it for the file's metadata."""
    item = Incoming(filename=name, body=io.BytesIO(data), size=len(data), sha256=sha256_of([data]))
    try:
        return check_file(item, midi_limits=MidiLimits())
    except Rejected as exc:
        raise UserError(f"an output failed validation: {exc.message}") from exc
