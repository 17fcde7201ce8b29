"""NoteLedger: 1:1 with the synth, re-articulation, release_all."""

from hypothesis import given
from hypothesis import strategies as st

from midi_companion.ledger import NoteLedger, all_notes_off, note_kind, note_off, note_on


def test_note_on_then_off():
    ledger = NoteLedger()
    assert ledger.note_on(0, 60) is False
    assert ledger.sounding() == {(0, 60)}
    assert ledger.note_off(0, 60) is True
    assert ledger.sounding() == frozenset()
    assert ledger.note_off(0, 60) is False  # redundant


def test_outgoing_rearticulates_a_sounding_note():
    ledger = NoteLedger()
    assert ledger.outgoing(note_on(2, 64, 90)) == [note_on(2, 64, 90)]
    assert ledger.outgoing(note_on(2, 64, 70)) == [note_off(2, 64), note_on(2, 64, 70)]
    assert ledger.sounding() == {(2, 64)}
    assert ledger.outgoing(note_off(2, 64)) == [note_off(2, 64)]
    assert ledger.outgoing(note_off(2, 64)) == []  # second note-off: nothing to release


def test_velocity_zero_note_on_is_a_note_off():
    ledger = NoteLedger()
    ledger.outgoing((0x90, 60, 100))
    assert ledger.outgoing((0x90, 60, 0)) == [(0x90, 60, 0)]
    assert len(ledger) == 0


def test_other_messages_pass_unchanged():
    ledger = NoteLedger()
    for msg in [(0xB0, 64, 127), (0xC3, 5), (0xF8,), (0xE0, 0, 64)]:
        assert ledger.outgoing(msg) == [msg]
    assert ledger.sounding() == frozenset() and ledger.channels_used == frozenset()


def test_release_all_offs_then_cc123_on_every_channel_used():
    ledger = NoteLedger()
    ledger.outgoing(note_on(1, 60, 80))
    ledger.outgoing(note_on(0, 67, 80))
    ledger.outgoing(note_on(3, 50, 80))
    ledger.outgoing(note_off(3, 50))
    out = ledger.release_all()
    assert out == [
        note_off(0, 67),
        note_off(1, 60),
        all_notes_off(0),
        all_notes_off(1),
        all_notes_off(3),
    ]
    assert ledger.sounding() == frozenset()
    assert ledger.channels_used == {0, 1, 3}
    assert ledger.release_all() == [all_notes_off(0), all_notes_off(1), all_notes_off(3)]


def test_note_kind():
    assert note_kind((0x95, 1, 2)) == "on"
    assert note_kind((0x95, 1, 0)) == "off"
    assert note_kind((0x85, 1, 64)) == "off"
    assert note_kind((0xB5, 1, 2)) is None
    assert note_kind((0xF8,)) is None


class Synth:
    """A synth that stacks a voice per note-on and frees one per note-off (the kind that
    hangs a note when it gets two note-ons and one note-off for a key)."""

    def __init__(self):
        self.voices: dict[tuple[int, int], int] = {}

    @property
    def on(self) -> set[tuple[int, int]]:
        assert all(n <= 1 for n in self.voices.values()), "two voices on one key"
        return {key for key, n in self.voices.items() if n > 0}

    def play(self, msg):
        kind, key = note_kind(msg), (msg[0] & 15, msg[1] if len(msg) > 1 else None)
        if kind == "on":
            self.voices[key] = self.voices.get(key, 0) + 1
        elif kind == "off":
            self.voices[key] = max(0, self.voices.get(key, 0) - 1)
        elif msg[0] & 0xF0 == 0xB0 and msg[1] == 123:
            self.voices = {k: n for k, n in self.voices.items() if k[0] != key[0]}


notes = st.tuples(st.booleans(), st.integers(0, 3), st.integers(60, 63))


@given(st.lists(notes, max_size=60))
def test_ledger_mirrors_the_synth_and_release_all_silences_it(events):
    ledger, synth = NoteLedger(), Synth()
    for is_on, ch, pitch in events:
        for msg in ledger.outgoing(note_on(ch, pitch, 100) if is_on else note_off(ch, pitch)):
            synth.play(msg)
        assert ledger.sounding() == synth.on
    for msg in ledger.release_all():
        synth.play(msg)
    assert synth.on == set() and ledger.sounding() == frozenset()
