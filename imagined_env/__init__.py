"""imagined-env: PolyGRAD trajectory-diffusion world models as Gymnasium vector environments."""
__version__ = "0.1.0"
