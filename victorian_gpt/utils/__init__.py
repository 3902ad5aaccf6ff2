"""Mechanisms several parts of the project share, each written once: the Hub and the remote-code rule (`hub`), atomic
outputs (`files`), and facts about a model's shape and weights (`modeling`)."""
