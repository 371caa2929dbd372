"""Saving and loading a session: its ``state_dict()`` written as safetensors and JSON, kill-safe,
and read back checked field by field against :mod:`~defuse_widgets.persist.schema` (never
unpickled)."""
