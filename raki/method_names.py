"""The reconstruction methods by name, without the science behind them (no numpy, no torch).

Options, help texts and request checks name methods before anything is computed; the methods
themselves are in `raki.methods`, which re-exports these names.
"""

from __future__ import annotations

METHODS = ("auto", "raki", "rraki", "grappa", "cs", "ssdu", "zerofill")
DEFAULT_METHOD = "auto"
# What "auto" chooses among, per scan, by held-out ACS lines (`raki.selection`).
AUTO_CANDIDATES = ("cs", "grappa")
# The methods whose networks are trained on the ACS (`raki.train`).
NEURAL_METHODS = ("raki", "rraki")
# The regularisers of "cs" (`raki.sense`): L1-wavelet compressed sensing, Tikhonov CG-SENSE.
CS_REGULARIZERS = ("l1-wavelet", "tikhonov")
