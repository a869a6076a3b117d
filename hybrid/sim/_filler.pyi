"""Types of the compiled filler (``_filler.c``); see ``hybrid.sim.model.seeded_tokens``."""

def seeded_tokens(
    seed: int, low: int, high: int, first: list[str], opening: list[str], spaced: list[str], stop: str
) -> list[str]: ...
