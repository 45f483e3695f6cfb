"""The replay buffer: FIFO of preference pairs, drawn with weight inversely proportional to use.

Sampling rule (the published SAPO code's rule, restated): an entry used u times has weight
    w = 1 / (u + 1),   P(entry i) = w_i / sum_j w_j,
and a training batch is k = min(batch_size, len(buffer)) draws WITH replacement from these
probabilities (one `random.choices` call); then every draw adds 1 to its entry's use count (an
entry drawn twice in one batch gains 2). Pushing onto a full buffer drops the oldest entry.

Example: use counts [0, 1, 3] give weights [1, 1/2, 1/4], probabilities [4/7, 2/7, 1/7].

Plain Python lists and a `random.Random` (no torch), so the numbers can be checked by hand; the
buffer serialises to a Parquet table (`to_table` / `from_table`, its push count in the schema
metadata) for checkpoints.
"""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import asdict, dataclass, field, fields

import pyarrow as pa


@dataclass
class BufferEntry:
    prompt: str  # x: the chat messages as JSON
    prompt_ids: list[int]
    chosen_ids: list[int]  # y+ (answer tokens, EOS included)
    rejected_ids: list[int]  # y- = A + B' + C, or A + B' when B' ended with EOS
    cut: int  # |A|
    segment_tokens: int  # |B| replaced
    segment_adapted: bool  # |B| < configured segment length (short answer)
    ended_at_eos: bool  # the A + B' branch
    step: int  # training step that produced it
    entry_id: int  # running number (pushes so far), for tracing
    chosen_text: str = ""
    rejected_text: str = ""
    uses: int = 0


PUSHED = "sapo.buffer.pushed"  # schema metadata key: entries ever pushed
SCHEMA = pa.schema(
    [
        ("entry_id", pa.int64()),
        ("step", pa.int64()),
        ("uses", pa.int64()),
        ("prompt", pa.string()),
        ("chosen_text", pa.string()),
        ("rejected_text", pa.string()),
        ("cut", pa.int64()),
        ("segment_tokens", pa.int64()),
        ("segment_adapted", pa.bool_()),
        ("ended_at_eos", pa.bool_()),
        ("prompt_ids", pa.list_(pa.int32())),
        ("chosen_ids", pa.list_(pa.int32())),
        ("rejected_ids", pa.list_(pa.int32())),
    ]
)


@dataclass
class ReplayBuffer:
    capacity: int
    entries: deque = field(default_factory=deque)
    pushed: int = 0  # entries ever pushed (entry ids)

    def __len__(self) -> int:
        return len(self.entries)

    def push(self, entry: BufferEntry) -> None:
        if len(self.entries) >= self.capacity:
            self.entries.popleft()  # FIFO: the oldest goes
        self.entries.append(entry)
        self.pushed += 1

    def weights(self) -> list[float]:
        return [1.0 / (e.uses + 1) for e in self.entries]

    def probabilities(self) -> list[float]:
        w = self.weights()
        total = sum(w)
        return [x / total for x in w]

    def sample(self, batch_size: int, rng: random.Random) -> list[BufferEntry]:
        """k = min(batch_size, len) draws with replacement, weight 1 / (uses + 1); counts updated."""
        if not self.entries:
            raise ValueError("cannot sample from an empty replay buffer")
        k = min(batch_size, len(self.entries))
        drawn = rng.choices(list(self.entries), weights=self.weights(), k=k)
        for e in drawn:
            e.uses += 1
        return drawn

    def mean_uses(self) -> float:
        return sum(e.uses for e in self.entries) / len(self.entries) if self.entries else 0.0

    def to_table(self) -> pa.Table:
        cols = {f.name: [getattr(e, f.name) for e in self.entries] for f in fields(BufferEntry)}
        schema = SCHEMA.with_metadata({PUSHED: str(self.pushed)})
        return pa.table({name: cols[name] for name in SCHEMA.names}, schema=schema)

    @staticmethod
    def from_table(table: pa.Table, capacity: int, pushed: int | None = None) -> ReplayBuffer:
        """The buffer `to_table` wrote; `pushed` defaults to the count in the table's metadata."""
        if pushed is None:
            pushed = int((table.schema.metadata or {}).get(PUSHED.encode(), b"0"))
        buf = ReplayBuffer(capacity=capacity, pushed=pushed)
        for row in table.to_pylist():
            buf.entries.append(BufferEntry(**row))
        return buf

    def snapshot(self) -> list[dict]:
        """Comparable contents (used by tests and the resume check)."""
        return [asdict(e) for e in self.entries]


def prompt_json(messages: list[dict[str, str]]) -> str:
    return json.dumps(messages, ensure_ascii=False, sort_keys=True)
