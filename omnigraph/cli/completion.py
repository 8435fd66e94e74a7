"""`omnigraph completion bash|zsh|tcsh`: a shell completion script for every command and flag
(shtab, from the same argparse parser the commands run on)."""
from __future__ import annotations

import sys
from typing import Any

from omnigraph.errors import OmnigraphError


def register(sub: Any) -> None:
    p = sub.add_parser("completion", help="print a shell completion script",
                       description="Install with: omnigraph completion bash > ~/.local/share/bash-completion/"
                                   "completions/omnigraph  (zsh: into a folder on $fpath as _omnigraph)")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    p.set_defaults(func=_cmd)


def _cmd(args: Any) -> int:
    try:
        import shtab
    except ImportError:
        raise OmnigraphError("shell completion needs shtab", hint="pip install shtab") from None
    from omnigraph.cli.main import build_parser

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0
