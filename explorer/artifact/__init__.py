"""The packed deployable artifact (`.xpk`): the file format, its per-tensor codecs, bit packing, and
rebuilding a model's architecture from the file alone. Pure: bytes in, bytes or a model out."""
