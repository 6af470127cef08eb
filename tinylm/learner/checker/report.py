"""What the checklist found about one class: its lines (✓ or ✗ with the fix), how the class is
called, and, for training, the one line that refuses a class that sees the future.

The report phrases every sentence about the class itself, so a reader (``tinylm train``, the
``check-attention`` command) prints or raises what it says and edits none of it."""

from __future__ import annotations

from dataclasses import dataclass, field

from tinylm.learner.adapter import MaskConvention, Signature
from tinylm.learner.checker.mistakes import mistake

SEE_ATTENTION = "the attention line says why"


@dataclass
class Line:
    ok: bool
    text: str

    def __str__(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.text}"


@dataclass
class Report:
    """The checklist of one class; ``tinylm.learner.module`` calls it the way that worked."""

    header: str
    lines: list[Line] = field(default_factory=list)
    signature: Signature | None = None
    convention: MaskConvention | None = None
    causal: bool = False
    agrees: bool = False
    mistakes: list[str] = field(default_factory=list)  # keys of MISTAKES that reproduce its output
    returns_weights: bool = False
    future: str = ""  # how it sees the future: "output 0 changes when position 6 changes ..."
    causal_fix: str = ""  # the fix for that when no known mistake explains it
    context_ok: bool = False  # it runs at the training block_size as on the probe

    @property
    def ok(self) -> bool:
        return bool(self.lines) and all(line.ok for line in self.lines)

    def verdict(self, kind: str) -> str:
        """The text of the line about ``kind`` ("shape", "causal", "attention" ...), or ""."""
        return next((line.text for line in self.lines if line.text.startswith(kind)), "")

    def not_causal(self, spelled_out: bool = False) -> str:
        """The causal line of a class that sees the future. In the checklist the attention line
        below it names the mistake; ``spelled_out`` names it here, for a line read alone."""
        fix = self.causal_fix
        if self.mistakes:
            fix = "; ".join(f"{mistake(m).name}: {mistake(m).fix}" for m in self.mistakes) \
                if spelled_out else SEE_ATTENTION
        return f"causal: {self.future}: it sees the future; {fix}"

    def refusal(self, target: str) -> str | None:
        """Why training refuses the class ``target`` names, in one line; None when it may train:
        causal, repeatable and finite, and as good at the training block_size. A model that sees
        the next character learns to copy it, and nothing useful."""
        if self.causal and self.context_ok:
            return None
        if self.future:
            reason = self.not_causal(spelled_out=True)
            return f"{target} is refused, a model that sees the future learns nothing useful; {reason}"
        failed = next((line for line in self.lines if not line.ok), self.lines[0])
        return f"{target} is refused before training: {failed.text}"

    def __str__(self) -> str:
        return "\n".join([self.header, *map(str, self.lines)])
