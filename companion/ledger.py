"""The note ledger: which notes we have left sounding on the synth.

Every note-on that leaves the process is recorded until its note-off has left too, so stop,
preset switch, error and shutdown can end with nothing sounding (`release_all`). The ledger is
1:1 with the synth: a (channel, pitch) is either sounding or not. A second note-on for a note
already sounding is re-articulated (note-off first), because a synth that receives two
note-ons and one note-off for the same key may keep it ringing.

Messages are raw MIDI as rtmidi sends them: tuples (or lists) of ints. A note-on with
velocity 0 is a note-off. The ledger is not locked: the Scheduler owns it and serializes
every call; `sounding()` and `channels_used` return copies that are safe to read elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

NOTE_OFF = 0x80
NOTE_ON = 0x90
CONTROL_CHANGE = 0xB0
ALL_NOTES_OFF = 123

Message = Sequence[int]


# bytes in a whole message, by status (channel messages by their upper nibble); SysEx
# (0xF0) is any length; an undefined status (0xF4, 0xF5, 0xF9, 0xFD) is never well formed
_LENGTH = {0x80: 3, 0x90: 3, 0xA0: 3, 0xB0: 3, 0xC0: 2, 0xD0: 2, 0xE0: 3}
_SYSTEM_LENGTH = {0xF1: 2, 0xF2: 3, 0xF3: 2, 0xF6: 1, 0xF7: 1, 0xF8: 1, 0xFA: 1, 0xFB: 1}
_SYSTEM_LENGTH |= {0xFC: 1, 0xFE: 1, 0xFF: 1}


def well_formed(msg) -> bool:
    """A whole MIDI message: a status byte, then as many data bytes (< 0x80) as it takes.
    Running status (no status byte), a message cut short or with extra bytes, a data byte
    with its top bit set, or an undefined status is not; SysEx is, whatever its body."""
    if not msg:
        return False
    status = msg[0]
    if status == 0xF0:
        return True
    want = _LENGTH.get(status & 0xF0) if status < 0xF0 else _SYSTEM_LENGTH.get(status)
    return want == len(msg) and all(0 <= b < 0x80 for b in msg[1:])


def note_on(ch: int, pitch: int, velocity: int) -> tuple[int, int, int]:
    """A note-on message for channel `ch` (0-15)."""
    return (NOTE_ON | ch, pitch, velocity)


def note_off(ch: int, pitch: int) -> tuple[int, int, int]:
    """A note-off message (status 0x80, release velocity 0) for channel `ch` (0-15)."""
    return (NOTE_OFF | ch, pitch, 0)


def all_notes_off(ch: int) -> tuple[int, int, int]:
    """CC 123 (all notes off) for channel `ch`: the synth's own panic for that channel."""
    return (CONTROL_CHANGE | ch, ALL_NOTES_OFF, 0)


def note_kind(msg: Message) -> str | None:
    """'on' for a note-on with velocity > 0, 'off' for a note-off (0x80, or 0x90 velocity 0),
    None for anything else."""
    if len(msg) < 3:
        return None
    status = msg[0] & 0xF0
    if status == NOTE_ON:
        return "on" if msg[2] > 0 else "off"
    if status == NOTE_OFF:
        return "off"
    return None


class NoteLedger:
    """The notes sounding on the synth, as told by what we sent."""

    def __init__(self):
        self._sounding: set[tuple[int, int]] = set()
        self._channels: set[int] = set()

    def copy(self) -> NoteLedger:
        """A ledger in the same state, to try messages on without touching this one."""
        twin = NoteLedger()
        twin._sounding, twin._channels = set(self._sounding), set(self._channels)
        return twin

    def note_on(self, ch: int, pitch: int) -> bool:
        """Record a note-on; True when the note was already sounding, in which case the
        caller must send a note-off before the note-on (re-articulation)."""
        key = (ch, pitch)
        again = key in self._sounding
        self._sounding.add(key)
        self._channels.add(ch)
        return again

    def note_off(self, ch: int, pitch: int) -> bool:
        """Record a note-off; True when the note was sounding, False when the note-off is
        redundant (the synth has nothing to release)."""
        key = (ch, pitch)
        if key in self._sounding:
            self._sounding.discard(key)
            return True
        return False

    def outgoing(self, msg: Message) -> list[Message]:
        """Record `msg` as about to be sent and return what to send in its place.

        A note-on for a sounding note becomes [note-off, note-on]; a note-off for a note that
        is not sounding becomes [] (the note-on was never sent, or was already released); any
        other message passes unchanged.
        """
        kind = note_kind(msg)
        if kind is None:
            return [msg]
        ch, pitch = msg[0] & 0x0F, msg[1]
        if kind == "on":
            return [note_off(ch, pitch), msg] if self.note_on(ch, pitch) else [msg]
        return [msg] if self.note_off(ch, pitch) else []

    def sounding(self) -> frozenset[tuple[int, int]]:
        """The (channel, pitch) pairs sounding now (a copy)."""
        return frozenset(self._sounding)

    @property
    def channels_used(self) -> frozenset[int]:
        """Every channel that has had a note-on since this ledger was made."""
        return frozenset(self._channels)

    def release_all(self) -> list[tuple[int, int, int]]:
        """Forget every sounding note and return the messages that silence the synth:
        a note-off for each sounding note (by channel, then pitch), then CC 123 (all notes
        off) on every channel used, for notes the synth holds that we never knew of."""
        offs = [note_off(ch, pitch) for ch, pitch in sorted(self._sounding)]
        self._sounding.clear()
        return offs + [all_notes_off(ch) for ch in sorted(self._channels)]

    def __len__(self) -> int:
        return len(self._sounding)
