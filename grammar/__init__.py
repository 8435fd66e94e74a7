"""Package data: the DSL grammar (omnigraph.lark)."""
