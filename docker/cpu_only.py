"""Fail the image build when the environment carries CUDA: a CUDA torch or NVIDIA libraries.

The service runs torch on the CPU only (MiniLM routing); a CUDA build of torch and its
`nvidia-*` wheels would add gigabytes the container never uses.
"""

from __future__ import annotations

import importlib.metadata
import sys

import torch

CUDA_PACKAGES = ("nvidia-", "triton", "cuda-")


def main() -> int:
    problems = []
    if torch.version.cuda is not None:
        problems.append(f"torch {torch.__version__} is a CUDA {torch.version.cuda} build")
    names = sorted({dist.metadata["Name"].lower() for dist in importlib.metadata.distributions()})
    problems += [f"CUDA package {name}" for name in names if name.startswith(CUDA_PACKAGES)]
    if problems:
        sys.stderr.write("not a CPU-only environment:\n" + "\n".join(problems) + "\n")
        return 1
    sys.stdout.write(f"CPU-only: torch {torch.__version__}, {len(names)} distributions\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
