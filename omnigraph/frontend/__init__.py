"""Frontends: YAML, the `.og` DSL and the Python builder, all producing one PipelineSpec."""
from omnigraph.frontend.load import LoadedSpec, load_spec, parse_spec_text

__all__ = ["LoadedSpec", "load_spec", "parse_spec_text"]
