"""Real music that ships with our dependencies: Bach chorales from music21's bundled corpus.

The demo and the tests need real MIDI files but may not download anything. music21 (a dev
dependency) bundles 408 Bach pieces as MusicXML; exporting one to MIDI takes ~0.4 s, so exports
are cached: a file already in ``dest`` is not exported again.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cadenza.atomic import atomic_path


def bach_chorale_sources() -> list[Path]:
    """The bundled Bach MusicXML files (.mxl), sorted by name so indexes are stable.

    Found in music21's package folder without importing music21 (≈2 s), so that a cache that
    is already complete costs nothing; it is the same list as ``corpus.getComposer("bach")``
    restricted to .mxl.
    """
    spec = importlib.util.find_spec("music21")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "music21 is needed for the bundled Bach chorales: pip install 'music21>=9,<11'"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "corpus" / "bach"
    return sorted(root.rglob("*.mxl"), key=lambda p: p.name)


def export_bach_chorales(dest: Path, n: int, *, start: int = 0) -> list[Path]:
    """Export chorales ``start … start+n-1`` (in name order) to ``dest/<name>.mid``.

    Files already present are reused (the cache); new ones are written atomically, so concurrent
    exports and interrupted runs never leave a partial MIDI file.
    Returns the paths in order. Raises ValueError when the range exceeds the corpus.
    """
    sources = bach_chorale_sources()
    if n < 0 or start < 0 or start + n > len(sources):
        raise ValueError(f"chorales {start}..{start + n - 1} requested; {len(sources)} available")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for src in sources[start : start + n]:
        target = dest / (src.name.removesuffix(".mxl") + ".mid")
        if not target.exists():
            from music21 import converter

            stream = converter.parse(str(src))
            with atomic_path(target, suffix=".mid.tmp") as tmp:
                stream.write("midi", fp=str(tmp))
        out.append(target)
    return out


__all__ = ["bach_chorale_sources", "export_bach_chorales"]
