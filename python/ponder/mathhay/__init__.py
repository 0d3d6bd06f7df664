"""MathHay: a long-context math benchmark (arXiv 2410.04698), offline by default.

- :mod:`~ponder.mathhay.synthetic`: documents holding quantities and tasks of the seven types
  (``sssd`` ... ``3s3d``) with their ``solve()`` code, from templates, in the original schema.
- :mod:`~ponder.mathhay.sandbox`: runs generated ``solve()`` code in a locked-down process.
- :mod:`~ponder.mathhay.qc`: quality control, the sandboxed ``solve()`` against an independent
  solution that reads the documents' text.
- :mod:`~ponder.mathhay.haystack`: prompts cut to a token budget, relevant documents first,
  middle, last or at a percentile, at document boundaries.
- :mod:`~ponder.mathhay.llm_generation`: the original's generation chain on a language model
  (topics -> subtopics -> queries -> documents -> tasks, with the alignment check).
- :mod:`~ponder.mathhay.evaluate`: asking any :class:`~ponder.generation.TextGenerator`,
  tolerant JSON parsing, numeric scoring, a separate judge, resumable runs, tables, heatmaps.

See docs/mathhay.md.
"""

from .evaluate import (CachedGenerator, OracleReader, accuracy_table, evaluate, heatmap,
                       llm_judge, parse_answer)
from .haystack import PLACEMENTS, RegexTokenizer, build_haystack, render_prompt, token_counter
from .qc import consistent, independent_answer, quality_control
from .sandbox import SandboxLimits, SandboxResult, SandboxUnavailableError, run_solve
from .synthetic import TASK_TYPES, document_passes_filters, generate_benchmark, generate_documents

__all__ = ["PLACEMENTS", "TASK_TYPES", "CachedGenerator", "OracleReader", "RegexTokenizer",
           "SandboxLimits", "SandboxResult", "SandboxUnavailableError", "accuracy_table",
           "build_haystack", "consistent", "document_passes_filters", "evaluate",
           "generate_benchmark", "generate_documents", "heatmap", "independent_answer",
           "llm_judge", "parse_answer", "quality_control", "render_prompt", "run_solve",
           "token_counter"]
