"""One executor per stage kind; see EXECUTORS in omnigraph/runtime/executor.py."""
