"""The models every stage runs: the :class:`~defuse_widgets.models.generative.Generator` protocol
and its adapters, the demo VAE and CNN, the one batched inference loop, the validity score,
latent paths and the generator report."""
