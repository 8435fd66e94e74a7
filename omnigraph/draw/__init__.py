"""Pictures a person checks a plan or a run against: the placement of a plan (`plan --viz`), a
timeline of stage steps (`simulate --timeline`), and Chrome-trace files of measured runs
(`run --trace`) and simulations, which Perfetto lays side by side.

Drawn with matplotlib (the `viz` extra), imported only when a picture is asked for. The
drawers take plain data (a placement report, spans), never the compiler's or runtime's objects.
"""
