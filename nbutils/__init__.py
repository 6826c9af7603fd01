"""nbutils: the helper library behind the notebooks in notebooks/ (arXiv -> instruction data -> QLoRA -> eval).

Kept import-light: stage modules (scrape, parse, generate, finetune, evaluate) are imported by name.
"""
__version__ = "0.1.0"

import warnings as _warnings

# Without ipywidgets, tqdm.auto falls back to text bars (readable in papermill's saved notebooks too);
# its warning about that would otherwise open every notebook.
_warnings.filterwarnings("ignore", message="IProgress not found")
