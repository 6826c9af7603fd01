"""The demo profile's arXiv look-alike: the project's own short LLM papers (corpus.py, papers/*.txt), rendered
to PDFs (pdf.py) and served on 127.0.0.1 with arxiv.org's markup and export API (server.py)."""
from .corpus import DemoPaper, load_corpus, parse_paper
from .pdf import cached_pdf, render_paper
from .server import DemoSite, RequestRecord, atom_feed

__all__ = ["DemoPaper", "DemoSite", "RequestRecord", "atom_feed", "cached_pdf", "load_corpus", "parse_paper",
           "render_paper"]
