"""Frontends: YAML, the `.og` DSL and the Python builder, all producing one PipelineSpec."""
from omnigraph.frontend.builder import Pipeline, stream
from omnigraph.frontend.load import LoadedSpec, load_spec, parse_spec_text

__all__ = ["LoadedSpec", "Pipeline", "load_spec", "parse_spec_text", "stream"]
