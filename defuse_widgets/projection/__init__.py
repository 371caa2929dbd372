"""The error map, between the regions and the widgets: 2-D layouts of latent codes (UMAP, PCA)
cached in memory and on disk (:mod:`.layout`), region colors that stay apart for every common
vision (:mod:`.colors`), and the thumbnails and background the map draws (:mod:`.points`)."""
