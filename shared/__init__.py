"""Helpers shared by the layers (`fanout`, `store`, `gateway`), owning no part of the data path.
Imports nothing of this project, so any layer may use it without depending on another."""
