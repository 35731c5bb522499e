"""Run the command line with ``python -m asyncllm``."""

from .cli import main

main()
