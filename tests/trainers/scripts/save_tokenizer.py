"""Save SmolLM2's Hugging Face tokenizer from the bundled GGUF: save_tokenizer.py GGUF OUT_DIR."""

import sys
from pathlib import Path

from transformers import AutoTokenizer

gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
tokenizer.save_pretrained(str(out))
