"""Datasets, subsets and the preprocessing that turns frames into model inputs."""
