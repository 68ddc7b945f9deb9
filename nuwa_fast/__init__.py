"""nuwa-fast: NUWA-Infinity inference engine (autoregressive over autoregressive visual synthesis)."""
__version__ = "0.1.0"
