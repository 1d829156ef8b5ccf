"""DiffC: schedule (:mod:`.config`, :mod:`.steps`), the reverse-channel coder (:mod:`.channel`), its index
code (:mod:`.index_code`, :mod:`.tables`), the stream layout (:mod:`.bitstream`), reconstruction
(:mod:`.reconstruct`) and :class:`.codec.DiffcCodec`, which puts them behind the codec contract.

This ``__init__`` imports nothing, so that the registry can read :class:`.config.CodecConfig` (the codec's
options) without torch.
"""
