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
# "wavelet": wavelet sparsity by p-shrinkage (p = 1/2, the default: `raki.sense`);
# "l1-wavelet": the classic L1 norm (soft thresholding, as BART's pics -R W); "tikhonov": CG-SENSE.
CS_REGULARIZERS = ("wavelet", "l1-wavelet", "tikhonov")
# The image grids of "cs" (`raki.sense.grid_matrix`): "extended" past the measured k-space (a
# scanner measures a window of the object's spectrum; the default), "measured" (the periodic
# model of the measured matrix, right for k-space made by an FFT of an image). auto tests both.
CS_GRIDS = ("extended", "measured")
