"""The identify stage: :func:`~defuse_widgets.search.identify.identify` searches a generator's
latent space around real images for decodes the classifier gets wrong and returns them as an
:class:`~defuse_widgets.search.errors.ErrorSet`, with its search strategies, per-image randomness
and the same search on a Ray pool (the package is named for how it identifies: by search)."""
