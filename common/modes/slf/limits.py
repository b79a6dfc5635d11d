"""What the slf mode accepts and keeps at most, torch-free (the option specs and the messages share it)."""

from __future__ import annotations

DOWNLOAD_DTYPES = ("float32", "float16")  # a TX may ask for the download in IEEE 754 binary16

# Largest architecture the mode accepts (the RX and TX refuse bigger artifacts at start-up).
MAX_CHANNELS = 3
MAX_IMAGE_SIZE = 64
MAX_WIDTH = 256
MAX_CODE_DIM = 256
MAX_CODEWORDS = 4096
MAX_SEMANTIC_IMAGES = 2048  # images per SLF_SEMANTIC
KEEP_ALIGNMENTS = 64  # kept alignments at most (least recently used first out)
