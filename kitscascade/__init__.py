"""kitscascade: cascaded volumetric kidney and kidney-tumor segmentation (KiTS19).

The Snakemake workflow (``Snakefile``, ``rules/``) says what is made from what;
this package holds how: one module per phase, functions layered from arrays
up to files.
"""

__version__ = "0.1.0"
