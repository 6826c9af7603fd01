"""nbutils: the helper library behind the notebooks in notebooks/ (arXiv -> instruction data -> QLoRA -> eval).

Kept import-light: stage modules (scrape, parse, generate, finetune, evaluate) are imported by name.
"""
__version__ = "0.1.0"
