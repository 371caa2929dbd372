"""Scale-out on Ray: :class:`~defuse_widgets.distributed.backend.RayBackend` (a pool of actors,
checked before use) and a model's forward over a whole split on it; ray is imported only when
Ray work runs."""
