"""Model families (torch). One module per family; ``FAMILY_MODULES`` maps each family name
(the seed systems' names, as written into ONNX metadata) to the module that defines it.

Every family module exposes ``build(family, rep, **model_args) -> torch.nn.Module`` and
``batches(...)``; see docs/ARCHITECTURE.md ("Family modules").
"""

FAMILY_MODULES = {
    "lstm": "models.lstm",
    "bilstm": "models.lstm",
    "conv-lstm": "models.lstm",
    "note-lstm": "models.note_lstm",
    "roll-lstm": "models.roll_lstm",
    "transformer": "models.transformer",
    "roll-nade-lstm": "models.roll_nade",
    "multitrack-lstm": "models.multitrack_lstm",
    "lstm-vae": "models.lstm_vae",
}
