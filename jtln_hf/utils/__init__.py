"""Small foundations every layer may use: atomic writes (:mod:`~jtln_hf.utils.io`), seed-paired statistics
(:mod:`~jtln_hf.utils.stats`) and what tables and figures call each method (:mod:`~jtln_hf.utils.styles`)."""
