"""What one indexing run did, counted as it goes (shared by every engine)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IngestReport:
    """What one ``index`` run did."""

    total: int = 0
    skipped: int = 0
    replaced: int = 0
    indexed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    biases: str = "none"

    @property
    def videos_per_second(self) -> float:
        return (self.indexed + len(self.failed)) / self.seconds if self.seconds > 0 else 0.0
