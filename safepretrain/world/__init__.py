"""The worlds: the generated model organism (`organism.py`, the default study's) and the embedded
registry-text world: documents, scorer labels and prompt sets built from registry packages.

`load_world()` reads the pack shipped in `safepretrain/world/pack` (or any folder built with
`safepretrain world build --out DIR`); `build.py` makes it; `dedup.py` keeps train and eval
disjoint; `generators.py` writes benign instructions and math word problems by code.
"""

from safepretrain.world.loader import World, WorldPackError, default_pack_path, load_world, pack_sources


def world_for(cfg) -> World:
    """The world a study config selects (`world.kind`): the generated organism or a built pack."""
    if cfg.world.kind == "organism":
        from safepretrain.world.organism import organism_world

        return organism_world(cfg.world.organism)
    return load_world(cfg.world.pack)


def world_sources(cfg) -> list[str]:
    """Document source names of the selected world (cheap; for config validation)."""
    if cfg.world.kind == "organism":
        from safepretrain.world.organism import PER_KIND

        return sorted(f"organism_{k}" for k in PER_KIND)
    return pack_sources(cfg.world.pack)


__all__ = ["World", "WorldPackError", "default_pack_path", "load_world", "pack_sources", "world_for", "world_sources"]
