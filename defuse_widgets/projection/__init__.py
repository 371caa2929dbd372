"""The error map's layout: 2-D projections of latent codes (UMAP, with a PCA fallback), cached in
memory and on disk, and a fitted map's placer for new codes (:mod:`.layout`)."""
