"""Bounds on untrusted spec input, shared by every frontend."""
MAX_SPEC_BYTES = 4 * 1024 * 1024  # a real pipeline spec is a few KiB
MAX_NESTING = 48  # brackets/blocks deep; real specs stay under 10
MAX_NODES = 200_000  # values after YAML alias expansion ("billion laughs")
