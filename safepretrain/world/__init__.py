"""The worlds: where a study's documents, scorer labels and prompt sets come from.

- `pack`: the embedded registry-text world (`loader.py` reads a pack; `build.py` makes one with `safepretrain world
  build --out DIR`; `dedup.py` keeps train and eval disjoint; `generators.py` writes benign instructions and math
  word problems by code);
- `organism`: the generated model organism with ground-truth harm (`organism.py`, the default study's).

`WORLDS` maps `world.kind` to the builder of a `World` from the `world` config section; adding a world is a file
plus a `WORLDS.register` line. Options: `sources(world_cfg)` (its document sources, cheap, for validation);
`truth_labels` (documents carry ground-truth harm: `data.routing.by=truth` may use them); `benign_answers` (its
benign prompts have answers: `benign_ft.data=benign_answers|benign_facts`).
"""

from safepretrain.config.data import OrganismConfig, WorldConfig
from safepretrain.registry import Registry
from safepretrain.world.loader import World, WorldPackError, default_pack_path, load_world, pack_sources
from safepretrain.world.organism import PER_KIND, organism_world


def _pack(world_cfg: WorldConfig) -> World:
    return load_world(world_cfg.pack)


def _pack_sources(world_cfg: WorldConfig) -> list[str]:
    return pack_sources(world_cfg.pack)


def _organism(world_cfg: WorldConfig) -> World:
    return organism_world(world_cfg.organism)


def _organism_sources(world_cfg: WorldConfig) -> list[str]:
    return sorted(f"organism_{k}" for k in PER_KIND)


WORLDS: Registry = Registry("world")
WORLDS.register("pack", _pack, settings=WorldConfig, sources=_pack_sources)
WORLDS.register("organism", _organism, settings=OrganismConfig, section="organism", sources=_organism_sources,
                truth_labels=True, benign_answers=True)


def world_for(cfg) -> World:
    """The world a study config selects (`world.kind`)."""
    return WORLDS[cfg.world.kind].build(cfg.world)


def world_sources(cfg) -> list[str]:
    """Document source names of the selected world (cheap; for config validation)."""
    return WORLDS[cfg.world.kind].options["sources"](cfg.world)


__all__ = ["WORLDS", "World", "WorldPackError", "default_pack_path", "load_world", "pack_sources", "world_for",
           "world_sources"]
