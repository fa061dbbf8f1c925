"""gansweep: a registry of GAN variants, one fast trainer, and sweeps over them tracked for comparison."""

__version__ = "0.1.0"
