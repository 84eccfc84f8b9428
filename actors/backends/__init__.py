"""Backend actors: the instruments sheets run on (CLI processes, scripted test doubles)."""
