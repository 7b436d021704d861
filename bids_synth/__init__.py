"""bids_synth: a BIDS App that imputes missing brain-imaging modalities with diffusion models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version('bids_synth')
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = '0+unknown'

__all__ = ['__version__']
