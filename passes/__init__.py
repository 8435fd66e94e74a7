"""Compiler passes over the omni dialect: one pass per file, ordered in registry.py."""
