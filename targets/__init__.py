"""Package data: target (cluster) descriptions, one YAML file each."""
