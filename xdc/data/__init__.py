"""Data layer: index files into a manifest, decode clips, log-mel, transforms, datasets, demo data."""
