"""omnigraph: a declarative graph compiler for any-to-any multimodal ML pipelines."""
__version__ = "0.1.0"
