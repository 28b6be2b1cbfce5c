"""slmlab: the whole life of small language models on modest hardware."""

__version__ = "0.1.0"
