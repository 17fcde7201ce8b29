"""Armed answers: harmonize's speculation hits, sent by the port process the moment the lead
note comes in, before the daemon has seen it.

Between lead notes the daemon knows what a hit would send (Accompaniment.armed: the step
computed ahead for each likely lead pitch, written out as messages). It hands that table to
the port process (companion/port_process.py), which owns the input and output ports. When a
lead note-on arrives the port process stamps it, sends the armed answer at once from the
input's own thread (the path of a plain echo: no pipe, no daemon GIL), and forwards the note
to the daemon marked as answered. The daemon then handles the note as always; its hit sends
the very same messages, which the port process recognises and does not send again.

A table holds only while what it was built from holds:
- no input came since the daemon built it (`after`: the number of input messages the daemon
  had handled then; MIDI clock ticks and active sensing are not counted), and one note spends
  it (a new one follows);
- the note is stamped before `until_ns` (the end of the grid step it answers, or the next
  message due on a voice's channel, whichever is first);
- nothing was sent on a voice's channel since it was armed (`sent_on`).
When the daemon's answer to a note differs from what was sent for it all the same (a table
gone stale in a way none of the rules above caught, a note the daemon dropped in a flood),
the port process learns it when the daemon says it has handled that note (`handled`): every
note it started that the daemon did not start too is released then, so nothing hangs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from midi_companion.ledger import NoteLedger, note_kind

UNCOUNTED = (0xF8, 0xFE)  # MIDI clock ticks and active sensing leave a table armed
SEQ_MASK = (1 << 24) - 1  # the daemon names a handled note by its number's low 24 bits


@dataclass(frozen=True)
class Armed:
    """The answers for the next lead note-on: `answers[pitch]` is the messages (3 bytes
    each, in order) to send when the note-on of `pitch` comes on `channel` (None: any) before
    `until_ns`, the daemon having handled `after` input messages; `voices`: the channels the
    answers play on."""

    after: int
    until_ns: int
    channel: int | None
    voices: tuple[int, ...]
    answers: dict[int, bytes]

    def encode(self) -> bytes:
        return json.dumps(
            {
                "after": self.after,
                "until": self.until_ns,
                "channel": self.channel,
                "voices": list(self.voices),
                "answers": {str(p): m.hex() for p, m in self.answers.items()},
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Armed:
        d = json.loads(data)
        return cls(
            d["after"],
            d["until"],
            d["channel"],
            tuple(d["voices"]),
            {int(p): bytes.fromhex(m) for p, m in d["answers"].items()},
        )


def as_sent(ledger: NoteLedger, msgs: Sequence[Sequence[int]]) -> bytes:
    """`msgs` as the scheduler sends them through `ledger` (a copy is tried, the ledger is
    left as it is): a note-on of a sounding note is preceded by its note-off, a note-off of
    a silent note is left out."""
    trial = ledger.copy()
    return b"".join(bytes(m) for msg in msgs for m in trial.outgoing(msg))


class Answerer:
    """The port process's side (see the module's docstring): it counts the input, answers
    from the armed table, and matches what the daemon sends against what it sent early."""

    def __init__(self):
        self.armed: Armed | None = None
        self.seq = 0  # input messages forwarded to the daemon (UNCOUNTED left out)
        self.early: dict[int, list[bytes]] = {}  # note's number -> sent early, not matched yet
        self.answered = 0

    def arm(self, armed: Armed | None) -> None:
        self.armed = armed

    def heard(self, t_ns: int, msg: Sequence[int], changing=None) -> tuple[int, list[bytes]]:
        """One input message stamped `t_ns`: its number and the messages to send now for it
        (none unless it is a lead note-on the table answers). `changing(channels)`: whether
        something waiting to be sent will change what sounds on them (then the table is not
        used: the daemon answers)."""
        if not msg or msg[0] in UNCOUNTED:
            return self.seq, []
        self.seq += 1
        armed, self.armed = self.armed, None  # any input spends the table
        if (
            armed is None
            or armed.after != self.seq - 1
            or t_ns >= armed.until_ns
            or len(msg) != 3
            or msg[0] & 0xF0 != 0x90
            or msg[2] == 0
            or (armed.channel is not None and msg[0] & 0x0F != armed.channel)
        ):
            return self.seq, []
        answer = armed.answers.get(msg[1])
        if not answer or (changing is not None and changing(armed.voices)):
            return self.seq, []
        msgs = [answer[i : i + 3] for i in range(0, len(answer), 3)]
        self.early[self.seq & SEQ_MASK] = list(msgs)
        self.answered += 1
        return self.seq, msgs

    def sent_on(self, channel: int | None) -> None:
        """Something was sent on `channel` from the queue: a table playing there is stale."""
        if self.armed is not None and channel in self.armed.voices:
            self.armed = None

    def matched(self, data: bytes) -> bool:
        """Whether `data`, handed over by the daemon, was sent early already (and is
        therefore not sent again)."""
        for msgs in self.early.values():
            if data in msgs:
                msgs.remove(data)
                return True
        return False

    def handled(self, seq: int) -> list[bytes]:
        """The daemon has handled note `seq`: the releases of the notes sent early for it
        that the daemon did not start too."""
        left = self.early.pop(seq & SEQ_MASK, [])
        return [bytes((0x80 | m[0] & 0x0F, m[1], 0)) for m in left if note_kind(m) == "on"]
