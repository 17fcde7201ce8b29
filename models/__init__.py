"""Model families (torch). One module per family; ``FAMILY_MODULES`` maps each family name
(the seed systems' names, as written into ONNX metadata) to the module that defines it.

Every family module exposes ``build(family, rep, **model_args) -> torch.nn.Module`` and
``batches(...)``; see docs/ARCHITECTURE.md ("Family modules").
"""

FAMILY_MODULES = {
    "lstm": "midi_companion.models.lstm",
    "bilstm": "midi_companion.models.lstm",
    "conv-lstm": "midi_companion.models.lstm",
    "note-lstm": "midi_companion.models.note_lstm",
    "roll-lstm": "midi_companion.models.roll_lstm",
    "transformer": "midi_companion.models.transformer",
    "roll-nade-lstm": "midi_companion.models.roll_nade",
    "multitrack-lstm": "midi_companion.models.multitrack_lstm",
    "lstm-vae": "midi_companion.models.lstm_vae",
    "classifier": "midi_companion.models.classifier",
    "transformer-vae": "midi_companion.models.transformer_vae",
    "dcgan": "midi_companion.models.gan",
    "note-gan": "midi_companion.models.gan",
    "image-gan": "midi_companion.models.gan",
    "vae-nn": "midi_companion.models.vae_nn",
}
