"""Token splits in, (x, y) batches out: checks, window sampling and the seeded data streams.

Training windows are drawn by one `torch.Generator` per micro-batch *slot* (see `slot_seed`), so
the data order depends only on the seed and the global batch shape, not on the number of ranks,
and a checkpoint of the generator states resumes the exact same batches. Evaluation uses fixed,
evenly spaced windows instead (`eval_starts`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cadenza.train.config import TrainConfig
from cadenza.train.distributed import DistInfo

if TYPE_CHECKING:
    from cadenza.tokenize.mmm import MMMIds, Track


def _check_split(
    name: str, array: np.ndarray[Any, Any], seq_len: int, vocab_size: int
) -> np.ndarray[Any, Any]:
    """Reject data the loop cannot use, with the fix in the message."""
    arr = np.asarray(array)
    if arr.ndim != 1:
        raise ValueError(f"the {name} split must be a 1-D token array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"the {name} split must hold integer token ids, got dtype {arr.dtype}")
    if arr.shape[0] < seq_len + 1:
        raise ValueError(
            f"the {name} split has {arr.shape[0]} tokens but seq_len={seq_len} needs at least "
            f"{seq_len + 1}; add more data to the corpus or lower seq_len"
        )
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"the {name} split has token ids in [{low}, {high}] but vocab_size is {vocab_size}; "
            "the corpus and the model were built with different tokenizers"
        )
    return arr


def check_splits(
    data: Mapping[str, np.ndarray], seq_len: int, vocab_size: int
) -> dict[str, np.ndarray]:
    """The "train", "val" and (if given) "test" arrays, each checked for the model and seq_len."""
    if "train" not in data or "val" not in data:
        raise ValueError("data needs 'train' and 'val' token arrays ('test' is optional)")
    return {
        name: _check_split(name, data[name], seq_len, vocab_size)
        for name in ("train", "val", "test")
        if name in data
    }


def windows(arr: np.ndarray[Any, Any], starts: np.ndarray[Any, Any], seq_len: int) -> np.ndarray:
    """(B, seq_len + 1) int64 windows starting at `starts` (gathered in numpy, no full copy)."""
    index = starts[:, None] + np.arange(seq_len + 1)[None, :]
    return np.asarray(arr[index], dtype=np.int64)


def grid_starts(arr: np.ndarray[Any, Any], bos_id: int, grid: int, high: int) -> np.ndarray:
    """Window starts below `high` at each BOS of `arr` and every `grid` tokens after it.

    A corpus stream is BOS file EOS BOS file EOS ...; aligned windows see a file's tokens in
    the same phase of its grid (for quarter-vq: a window starts on a quarter's first code).
    """
    bos = np.flatnonzero(arr[: max(high, 0)] == bos_id)
    if bos.size == 0:
        return np.zeros(0, np.int64)
    ends = np.append(bos[1:], high)
    parts = [bos.astype(np.int64)]
    parts += [np.arange(b + 1, e, grid, dtype=np.int64) for b, e in zip(bos, ends, strict=True)]
    return np.sort(np.concatenate(parts))


def prefixed_windows(
    arr: np.ndarray[Any, Any],
    bos: np.ndarray[Any, Any],
    starts: np.ndarray[Any, Any],
    seq_len: int,
    slots: int,
) -> np.ndarray:
    """(B, seq_len + 1) windows that each open with their file's BOS and ``slots`` conditioning
    ids (the ``slots`` ids after the BOS at or before the start, in ``bos``), then the tokens
    from ``starts`` on: every window sees its file's tags, wherever in the file it starts. A
    start right after the prefix gives the file's own first window, unchanged."""
    head = slots + 1
    owner = bos[np.searchsorted(bos, starts, side="right") - 1]
    index = np.concatenate(
        [
            owner[:, None] + np.arange(head)[None, :],
            starts[:, None] + np.arange(seq_len + 1 - head)[None, :],
        ],
        axis=1,
    )
    return np.asarray(arr[index], dtype=np.int64)


def prefixed_starts(
    arr: np.ndarray[Any, Any], bos_id: int, slots: int, grid: int, high: int
) -> tuple[np.ndarray, np.ndarray]:
    """(BOS positions, window starts): each file's first token after its ``slots``-id prefix
    and every ``grid`` tokens after it, before the file's EOS and below ``high`` (see
    :func:`prefixed_windows`)."""
    bos = np.flatnonzero(arr == bos_id).astype(np.int64)
    ends = np.append(bos[1:], arr.shape[0])
    parts = [
        np.arange(b + 1 + slots, min(e - 1, high), grid, dtype=np.int64)
        for b, e in zip(bos, ends, strict=True)
    ]
    starts = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return bos, starts


def eval_starts(n_tokens: int, seq_len: int, max_windows: int) -> np.ndarray:
    """Evenly spaced, fixed window starts: every evaluation scores the same tokens.

    Fixed windows make successive val losses comparable (early stopping reacts to the model,
    not to sampling noise) and do not depend on the number of ranks.
    """
    last = n_tokens - seq_len - 1
    disjoint = max(1, (n_tokens - 1) // seq_len)
    count = max(1, min(max_windows, disjoint))
    return np.unique(np.linspace(0, last, count).round().astype(np.int64))


def slot_seed(seed: int, slot: int) -> int:
    """Seed of the data generator that feeds micro-batch slot `slot` of every global batch.

    A global batch has world_size x grad_accum_steps slots; slot j always gets the same stream
    whichever rank runs it, so one process with grad_accum 2 sees exactly the batches that two
    DDP ranks with grad_accum 1 see together.
    """
    return (seed + 1) * 1_000_003 + slot


class Batcher:
    """Moves windows to the device; pinned + non-blocking on CUDA so copies overlap compute."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pin = device.type == "cuda"

    def __call__(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        tensor = torch.from_numpy(windows)
        if self.pin:
            tensor = tensor.pin_memory()
        tensor = tensor.to(self.device, non_blocking=self.pin)
        return tensor[:, :-1], tensor[:, 1:]


class TrainBatches:
    """This rank's micro-batch streams: one seeded generator per slot it runs in each step."""

    def __init__(
        self,
        train_arr: np.ndarray,
        cfg: TrainConfig,
        info: DistInfo,
        batcher: Batcher,
        bos_id: int | None,
        infill_ids: MMMIds | None = None,
        cond_slots: int = 0,
    ) -> None:
        ga = cfg.grad_accum_steps
        self.infill_fraction = cfg.infill_fraction
        self.infill_layout = cfg.infill_layout
        self.infill_ids = infill_ids
        self._file_starts: np.ndarray | None = None  # BOS positions, found on first use
        self._pieces: dict[int, list[Track]] = {}  # parsed files by their BOS position
        if self.infill_fraction > 0 and infill_ids is None:
            raise ValueError(
                "train.infill_fraction > 0 needs a corpus built with the `multitrack` preset "
                "(MMM with the infill tokens); set it to 0 or rebuild the corpus"
            )
        self.slots = [info.rank * ga + m for m in range(ga)]
        self.total_slots = info.world_size * ga
        self.generators = [
            torch.Generator().manual_seed(slot_seed(cfg.seed, s)) for s in self.slots
        ]
        self.tokens_per_step = cfg.batch_size * cfg.seq_len * self.total_slots
        self.arr = train_arr
        self.batch_size = cfg.batch_size
        self.seq_len = cfg.seq_len
        self.batcher = batcher
        self.high = train_arr.shape[0] - cfg.seq_len  # exclusive upper bound of window starts
        self.aligned: np.ndarray | None = None
        # cond_slots > 0 (an audio-vq corpus with learned tags): windows open with their
        # file's BOS and conditioning prefix (`prefixed_windows`)
        self.cond_slots = cond_slots
        self._bos = np.zeros(0, np.int64)
        if cond_slots > 0:
            if bos_id is None:
                raise ValueError("a corpus with a conditioning prefix needs its BOS id")
            if cond_slots + 2 > cfg.seq_len:
                raise ValueError(
                    f"seq_len {cfg.seq_len} leaves no room after the {cond_slots}-tag "
                    "conditioning prefix; raise seq_len"
                )
            self._bos, self.aligned = prefixed_starts(
                train_arr, bos_id, cond_slots, cfg.window_grid or 1, self.high
            )
            if self.aligned.size == 0:
                raise ValueError(
                    f"no training window of {cfg.seq_len} tokens fits the corpus; lower seq_len"
                )
        elif cfg.window_grid is not None:
            if bos_id is None:
                raise ValueError("train.window_grid needs the corpus's BOS id to find file starts")
            self.aligned = grid_starts(train_arr, bos_id, cfg.window_grid, self.high)
            if self.aligned.size == 0:
                raise ValueError(
                    f"no training window of {cfg.seq_len} tokens starts on the window_grid; "
                    "lower seq_len or drop window_grid"
                )

    def __call__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One step's micro-batches, drawn lazily (each after the previous one's backward)."""
        for gen in self.generators:
            if self.aligned is None:
                starts = torch.randint(0, self.high, (self.batch_size,), generator=gen).numpy()
            else:
                picks = torch.randint(0, self.aligned.size, (self.batch_size,), generator=gen)
                starts = self.aligned[picks.numpy()]
            if self.cond_slots:
                batch = prefixed_windows(self.arr, self._bos, starts, self.seq_len, self.cond_slots)
            else:
                batch = windows(self.arr, starts, self.seq_len)
            if self.infill_fraction > 0:
                batch = self._infill(batch, starts, gen)
            yield self.batcher(batch)

    def _infill(self, batch: np.ndarray, starts: np.ndarray, gen: torch.Generator) -> np.ndarray:
        """Turn about `infill_fraction` of the windows into fill-in-the-middle examples.

        The choices come from one seed drawn from the slot's generator, so they follow the
        training seed and a resumed run (whose generator states are restored) makes the same
        examples; with `infill_fraction` 0 nothing is drawn and the stream is as before.
        """
        from cadenza.tokenize.mmm import infill_example, layout_example

        t = self.infill_ids
        assert t is not None
        seed = int(torch.randint(0, 2**62, (1,), generator=gen).item())
        rng = np.random.default_rng(seed)
        length = batch.shape[1]
        for row in range(batch.shape[0]):
            if rng.random() >= self.infill_fraction:
                continue
            # The piece the window starts in, laid out as sampling lays out a prompt (a range
            # of bars of every track); a piece whose bars do not fit cuts the window itself
            # (mmm) or stays a plain window (spm, whose prompts need every track's bars).
            piece = self._piece(int(starts[row]))
            example = layout_example(piece, t, rng, length, self.infill_layout)
            if example is None:
                if self.infill_layout == "mmm":
                    batch[row] = infill_example(batch[row], t, rng)
                continue
            pad = length - len(example)  # the window's own first ids lead, as packed text
            batch[row, pad:] = example
        return batch

    def _piece(self, position: int) -> list[Track]:
        """The tracks of the corpus file (BOS … EOS) holding `position`, parsed once."""
        from cadenza.tokenize.mmm import parse_tracks

        t = self.infill_ids
        assert t is not None
        if self._file_starts is None:
            self._file_starts = np.flatnonzero(np.asarray(self.arr) == t.bos)
        starts = self._file_starts
        i = int(np.searchsorted(starts, position, side="right")) - 1
        lo = int(starts[i]) if i >= 0 else 0
        if lo not in self._pieces:
            hi = int(starts[i + 1]) if i + 1 < starts.size else int(self.arr.shape[0])
            if len(self._pieces) >= 4096:
                self._pieces.clear()
            self._pieces[lo] = parse_tracks(np.asarray(self.arr[lo:hi]).tolist(), t)
        return self._pieces[lo]
