"""`verify`: check the whole module against the omni dialect's verifiers."""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass


@dataclass(frozen=True)
class VerifyPass(ModulePass):
    name = "verify"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        op.verify()
