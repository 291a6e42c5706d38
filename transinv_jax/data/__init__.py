"""Dataset items, from original files or TFDS (see `sources`)."""
