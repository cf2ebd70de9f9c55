"""R sources of clusterlmer (installed as the package ``clusterlmer.r_scripts``).

``engine.R`` is sourced by the R engine; ``lmer_reference.R`` is a standalone
script for cross-checking any result with plain lme4/lmerTest via Rscript.
"""
