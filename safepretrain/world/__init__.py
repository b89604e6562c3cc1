"""The embedded default world: documents, scorer labels and prompt sets built from registry packages.

`load_world()` reads the pack shipped in `safepretrain/world/pack` (or any folder built with
`safepretrain world build --out DIR`); `build.py` makes it; `dedup.py` keeps train and eval
disjoint; `generators.py` writes benign instructions and math word problems by code.
"""

from safepretrain.world.loader import World, WorldPackError, default_pack_path, load_world, pack_sources

__all__ = ["World", "WorldPackError", "default_pack_path", "load_world", "pack_sources"]
