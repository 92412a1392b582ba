"""faena: a distributed CI/CD platform."""

__version__ = "0.1.0"
