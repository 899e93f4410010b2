"""`train` jobs: train a model on a corpus, checkpointing to the store, metrics to SQL.

Every row is written through `ctx.fenced()`, so only the attempt that holds the job writes.
A resumed attempt re-trains the steps after its checkpoint and reports them again: a metric
or checkpoint row for a (model, step) that exists is updated, not duplicated, because the
newest attempt's history is the one the final weights come from.

A checkpoint's object key names the attempt's claim token, so two attempts never write the
same key (nor the same temporary key); the checkpoint row, committed under the fence, is what
makes a checkpoint real, and resume loads the latest row. An attempt that loses the job while
writing deletes its own object; objects of a killed attempt that never got a row are deleted
by the next attempt before its first checkpoint.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from cadenza.db.models import Checkpoint, Corpus, MetricRecord, Model
from cadenza.jobs.context import FencedStore, JobContext, JobLost, Outcome, UserError
from cadenza.jobs.state import JobState, add_event
from cadenza.jobs.transient import JobInterrupted
from cadenza.storage import job_key
from cadenza.train.config import TrainConfig
from cadenza.train.params import TrainParams

if TYPE_CHECKING:
    from cadenza.tokenize.audio_vq import AudioVQTokenizer
    from cadenza.tokenize.mmm import MMMIds

log = logging.getLogger(__name__)


def load_corpus_arrays(ctx: JobContext, corpus: Corpus) -> dict[str, np.ndarray]:
    """The corpus's token arrays per split, from the store."""
    from cadenza.tokenize import load_npz

    arrays = load_npz(ctx.store.get(f"{corpus.object_prefix}/export.npz"))
    return {k: v.astype("int64") for k, v in arrays.items() if v.size}


class _Hooks:
    """TrainHooks backed by SQL (metrics, checkpoint rows) and the object store (bytes)."""

    def __init__(self, ctx: JobContext, model: Model, cfg: TrainConfig, share: float = 1.0) -> None:
        self.ctx = ctx
        self.model_id = model.id
        self.keep_last = cfg.keep_last_n
        self.orphans_cleaned = False
        self.share = share  # of the job's progress the trainer reports (a pair: the prior's)

    def on_metrics(self, record: dict[str, Any]) -> None:
        values = {k: v for k, v in record.items() if k not in ("step", "split", "loss")}
        step, split = int(record["step"]), str(record["split"])
        with self.ctx.fenced() as s:
            # A run resumed from a checkpoint (after a drain, an outage or a lost worker)
            # replays the steps after it: their rows are replaced, not duplicated.
            row = s.scalar(
                select(MetricRecord).where(
                    MetricRecord.model_id == self.model_id,
                    MetricRecord.step == step,
                    MetricRecord.split == split,
                )
            )
            if row is None:
                row = MetricRecord(model_id=self.model_id, step=step, split=split)
                s.add(row)
            row.loss = float(record["loss"])
            row.values = values
            add_event(s, self.ctx.job_id, "metrics", record)
        if record["split"] in ("val", "test"):
            self.write_curve()

    def write_curve(self) -> None:
        """Redraw the loss-curve PNG (train/val per step) so it is live during training."""
        from cadenza.render.plots import loss_curve_png

        with self.ctx.session() as s:
            rows = s.scalars(
                select(MetricRecord)
                .where(MetricRecord.model_id == self.model_id)
                .order_by(MetricRecord.step, MetricRecord.id)
            )
            history = [{"step": r.step, "split": r.split, "loss": r.loss} for r in rows]
        try:
            png = loss_curve_png(history)
        except Exception:  # a picture must never stop training
            log.exception("loss curve for model %s failed", self.model_id)
            return
        self.ctx.store.put(job_key(self.ctx.job_id, "loss.png"), png)

    def on_progress(self, fraction: float, message: str) -> None:
        self.ctx.progress(fraction * self.share, message)

    def should_stop(self) -> bool:
        return self.ctx.cancelled() or self.ctx.draining()

    def save_checkpoint(
        self, step: int, payload: bytes, *, val_loss: float | None, is_best: bool
    ) -> None:
        """Write the bytes under this attempt's own key, then make them real with one row.

        Objects whose rows this commit removed (pruned, or replaced at the same step) are
        deleted only after the commit, so a crash never leaves a row without its object.
        """
        if not self.orphans_cleaned:
            self._delete_orphans()
        token = (self.ctx.claim_token or f"a{self.ctx.attempt}")[:12]
        key = job_key(self.ctx.job_id, "checkpoints", f"step-{step:09d}-{token}.pt")
        self.ctx.store.put_atomic(key, payload)
        try:
            with self.ctx.fenced() as s:
                stale = self._upsert(s, step, key, len(payload), val_loss, is_best)
                stale += self._prune(s)
        except JobLost:
            _raw(self.ctx).delete(key)  # our bytes never became a checkpoint
            raise
        for old in stale:
            _raw(self.ctx).delete(old)

    def _upsert(
        self, s: Session, step: int, key: str, size: int, val_loss: float | None, is_best: bool
    ) -> list[str]:
        """Add or update the row of checkpoint `step`; returns an object key it replaced."""
        row = s.scalar(
            select(Checkpoint).where(Checkpoint.model_id == self.model_id, Checkpoint.step == step)
        )
        replaced = [row.object_key] if row is not None and row.object_key != key else []
        if row is None:
            row = Checkpoint(model_id=self.model_id, job_id=self.ctx.job_id, step=step)
            s.add(row)
        row.object_key = key
        row.size = size
        row.val_loss = val_loss
        if is_best:
            for c in s.scalars(select(Checkpoint).where(Checkpoint.model_id == self.model_id)):
                c.is_best = False
        row.is_best = is_best or bool(row.is_best)
        s.flush()
        return replaced

    def _prune(self, s: Session) -> list[str]:
        """Keep the last N checkpoints and the best one; delete the other rows.

        Returns their object keys, for deletion once the commit has removed the rows.
        """
        from cadenza.train.checkpoint import checkpoints_to_prune

        rows = {
            c.step: c
            for c in s.scalars(select(Checkpoint).where(Checkpoint.model_id == self.model_id))
        }
        best = [step for step, c in rows.items() if c.is_best]
        keys = []
        for step in checkpoints_to_prune(rows, keep_last_n=self.keep_last, protect=best):
            keys.append(rows[step].object_key)
            s.delete(rows[step])
        return keys

    def _delete_orphans(self) -> None:
        """Delete checkpoint objects no row names: left by an attempt killed mid-write.

        Runs once per attempt, before its first checkpoint, while this attempt holds the job,
        so no other attempt can still turn such an object into a checkpoint.
        """
        self.ctx.check_claim()
        prefix = job_key(self.ctx.job_id, "checkpoints") + "/"
        with self.ctx.session() as s:
            named = set(
                s.scalars(select(Checkpoint.object_key).where(Checkpoint.job_id == self.ctx.job_id))
            )
        for obj in self.ctx.store.list(prefix):
            if obj.key not in named:
                _raw(self.ctx).delete(obj.key)
        self.orphans_cleaned = True

    def load_latest_checkpoint(self) -> bytes | None:
        with self.ctx.session() as s:
            latest = s.scalar(
                select(Checkpoint)
                .where(Checkpoint.model_id == self.model_id, Checkpoint.job_id == self.ctx.job_id)
                .order_by(Checkpoint.step.desc())
                .limit(1)
            )
            key = latest.object_key if latest else None
        if key is None:
            return None
        self.ctx.progress(0.0, f"resuming from {key.rsplit('/', 1)[-1]}", force=True)
        return self.ctx.store.get(key)


def run(ctx: JobContext) -> Outcome:
    from cadenza.train import train

    p = TrainParams.model_validate(ctx.params)
    with ctx.session() as s:
        model = s.get(Model, p.model_id)
        if model is None:
            raise UserError(f"model {p.model_id} no longer exists")
        corpus = s.get(Corpus, model.corpus_id)
        if corpus is None:
            raise UserError(f"corpus {model.corpus_id} no longer exists")
        init_key = None
        if model.init_checkpoint_id:
            init = s.get(Checkpoint, model.init_checkpoint_id)
            if init is None:
                what = "base model" if model.adapter is not None else "checkpoint"
                raise UserError(f"the {what} {model.init_checkpoint_id} no longer exists")
            init_key = init.object_key
        s.expunge_all()
    data = load_corpus_arrays(ctx, corpus)
    cfg = TrainConfig.model_validate(model.train_config)
    spec = {
        "architecture": model.architecture,
        "config": model.config,
        "vocab_size": model.vocab_size,
    }
    pair = _pair_tokenizer(ctx, corpus, model, cfg)
    share, full = 1.0, data
    if pair is not None:  # the prior reads the coarse codes alone; the upsampler the rest
        from cadenza.models.audio_upsampler import coarse_stream

        data = {k: coarse_stream(v, pair) for k, v in data.items()}
        spec["vocab_size"] = pair.fine_base
        share = cfg.max_steps / (cfg.max_steps + (cfg.upsampler_steps or cfg.max_steps))
    slots = 0 if pair is not None else _cond_slots(ctx, corpus)
    ctx.progress(0.0, "starting training", force=True)
    hooks = _Hooks(ctx, model, cfg, share)
    try:
        result = train(
            spec,
            data,
            cfg,
            hooks,
            tokenizer_hash=model.tokenizer_hash,
            init_from=ctx.store.get(init_key) if init_key else None,
            bos_id=_bos_id(ctx, corpus) if cfg.window_grid is not None or slots else None,
            cond_slots=slots,
            infill_ids=_infill_ids(ctx, corpus) if cfg.infill_fraction > 0 else None,
            adapter=model.adapter,  # a LoRA model: init_from is its base's checkpoint
        )
    except ValueError as exc:  # bad data/config for this corpus: the user's to fix
        raise UserError(str(exc)) from exc
    if ctx.follower:  # rank 0 writes the curve and the weights, and commits
        return Outcome(lambda s: {}, message="follower")
    ctx.check_claim()  # stopped because another attempt took the job: write nothing more
    drained = result.stopped_reason == "drained" or (
        result.stopped_reason == "cancelled" and ctx.draining()
    )
    if drained and not ctx.cancelled():
        # Stopped for a shutdown (this worker's, or another node's of a multi-node run): the
        # loop saved a checkpoint; the next run resumes it without using up an attempt.
        raise JobInterrupted("a worker shut down during training; checkpoint saved")
    summary: dict[str, Any] = {
        k: v for k, v in vars(result).items() if isinstance(v, (int, float, str, type(None)))
    }
    cancelled = result.stopped_reason in ("cancelled", "drained")
    if pair is not None and not cancelled:
        up = _train_upsampler(ctx, hooks, pair, full, cfg, spec, share)
        summary["upsampler"] = up
        cancelled = bool(up["stopped"])
    hooks.write_curve()
    _export_weights(ctx, model.id)

    def finalize(s: Session) -> dict[str, Any]:
        row = s.get(Model, model.id)
        assert row is not None
        row.state = "cancelled" if cancelled else "ready"
        row.summary = summary
        return {"model_id": model.id}

    return Outcome(
        finalize,
        state=JobState.CANCELLED if cancelled else JobState.SUCCEEDED,
        message=f"{result.stopped_reason} after {summary.get('steps')} steps",
    )


def _pair_tokenizer(
    ctx: JobContext, corpus: Corpus, model: Model, cfg: TrainConfig
) -> AudioVQTokenizer | None:
    """The corpus's audio-vq tokenizer when the model is a coarse prior + upsampler
    (`train.audio_prior` pair), else None. The API refuses pair elsewhere; a row that slipped
    past it (another corpus, an adapter) fails here with the reason."""
    if cfg.audio_prior != "pair":
        return None
    from cadenza.tokenize.audio_vq import AudioVQTokenizer
    from cadenza.tokenize.registry import tokenizer_from_bytes

    tok = tokenizer_from_bytes(ctx.store.get(corpus.tokenizer_key))
    if not isinstance(tok, AudioVQTokenizer):
        raise UserError("train.audio_prior pair needs a corpus built with audio-vq")
    if model.adapter is not None:
        raise UserError("train.audio_prior pair cannot train an adapter; train a full model")
    return tok


def _train_upsampler(
    ctx: JobContext,
    hooks: _Hooks,
    tok: AudioVQTokenizer,
    data: dict[str, np.ndarray],
    cfg: TrainConfig,
    spec: dict[str, Any],
    share: float,
) -> dict[str, Any]:
    """A pair model's second phase: the upsampler trained on the training split's codes (its
    best on validation kept), then written into every checkpoint the model has (`best` and
    `latest` among them) under `UPSAMPLER_KEY`, each rewritten through the hooks as the loop
    writes one. Retrained from scratch on every attempt (`cadenza.train.upsampler`); a drain
    during it requeues the job. Returns the phase's summary."""
    from cadenza.models.audio_upsampler import UPSAMPLER_KEY, file_codes, upsampler_entry
    from cadenza.models.checkpoint import dump_checkpoint, load_checkpoint
    from cadenza.train.upsampler import build_upsampler, train_upsampler, val_nll

    steps = cfg.upsampler_steps or cfg.max_steps
    u_cfg = cfg.model_copy(
        update={"max_steps": steps, "warmup_steps": min(cfg.warmup_steps, steps)}
    )
    conf = dict(spec["config"])
    width = int(conf.get("n_embd") or conf.get("embed_dim") or 64)  # transformer, rnn
    up = build_upsampler(
        u_cfg,
        n_coarse=tok.cfg.coarse_codebook,
        n_fine=tok.cfg.fine_codebook,
        fine_per_coarse=tok.cfg.fine_per_coarse,
        width=min(width, 1024),
    )
    train_codes = file_codes(data["train"], tok)
    val_codes = file_codes(data["val"], tok) if "val" in data else []
    budget = cfg.eval_batches * cfg.batch_size * up.window

    def progress(step: int, score: float | None) -> None:
        what = f"upsampler step {step}/{steps}" + ("" if score is None else f", val {score:.3f}")
        ctx.progress(share + (1 - share) * step / steps, what, force=True)

    ctx.progress(share, f"training the upsampler ({up.num_params()} parameters)", force=True)
    try:
        score, kept, stopped = train_upsampler(
            up,
            train_codes,
            u_cfg,
            (lambda: val_nll(up, val_codes, budget)) if val_codes else None,
            should_stop=hooks.should_stop,
            on_progress=progress,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if stopped and ctx.draining() and not ctx.cancelled():
        raise JobInterrupted("a worker shut down while training the upsampler; it restarts")
    ctx.check_claim()
    entry = upsampler_entry(up)
    with ctx.session() as s:
        rows = [
            (c.step, c.object_key, c.val_loss, bool(c.is_best))
            for c in s.scalars(select(Checkpoint).where(Checkpoint.model_id == hooks.model_id))
        ]
    for step, key, val_loss, is_best in rows:
        payload = load_checkpoint(ctx.store.get(key))
        payload[UPSAMPLER_KEY] = entry
        hooks.save_checkpoint(step, dump_checkpoint(payload), val_loss=val_loss, is_best=is_best)
    return {
        "params": up.num_params(),
        "steps": steps,
        "kept_step": kept,
        "val_nll": None if score != score else round(score, 5),  # NaN: no validation split
        "stopped": stopped,
    }


def _raw(ctx: JobContext) -> Any:
    """The store without the claim check, for deleting this attempt's own objects."""
    return ctx.store.unfenced if isinstance(ctx.store, FencedStore) else ctx.store


def _cond_slots(ctx: JobContext, corpus: Corpus) -> int:
    """Length of the conditioning prefix every window opens with: an audio-vq corpus's learned
    tags (`AudioVQTokenizer.tag_slots`), else 0 (the tokenizer is read only for those)."""
    from cadenza.tokenize.registry import tokenizer_from_bytes

    spec = (corpus.params or {}).get("tokenizer_spec") or {}
    if spec.get("name") != "audio-vq" or not spec.get("learn_tags"):
        return 0
    return int(getattr(tokenizer_from_bytes(ctx.store.get(corpus.tokenizer_key)), "tag_slots", 0))


def _bos_id(ctx: JobContext, corpus: Corpus) -> int:
    """The corpus tokenizer's BOS id (where each file starts in the token stream)."""
    from cadenza.tokenize.registry import tokenizer_from_bytes

    return tokenizer_from_bytes(ctx.store.get(corpus.tokenizer_key)).bos_id


def _infill_ids(ctx: JobContext, corpus: Corpus) -> MMMIds:
    """The corpus tokenizer's MMM structure tokens, for fill-in-the-middle examples."""
    from cadenza.tokenize.mmm import MMMIds
    from cadenza.tokenize.registry import tokenizer_from_bytes

    tokenizer = tokenizer_from_bytes(ctx.store.get(corpus.tokenizer_key))
    try:
        return MMMIds.from_vocab(getattr(getattr(tokenizer, "miditok", None), "vocab", {}))
    except KeyError as exc:
        raise UserError(f"train.infill_fraction: {exc.args[0]}") from exc


def _export_weights(ctx: JobContext, model_id: str) -> None:
    """Write the best checkpoint's weights as safetensors (served by the API for download)."""
    from cadenza.db.repo import pick_checkpoint
    from cadenza.models.checkpoint import export_safetensors

    with ctx.session() as s:
        best = pick_checkpoint(session=s, model_id=model_id, which="best")
        key = best.object_key if best else None
    if key is None:
        return
    try:
        data = export_safetensors(ctx.store.get(key))
    except Exception:  # an export must never fail the training job that produced the weights
        log.exception("safetensors export failed for model %s", model_id)
        return
    ctx.store.put(job_key(ctx.job_id, "model.safetensors"), data)
