"""Datasets: ``gpuconv.datasets.mnist.load_data()``."""
from gpuconv.datasets import mnist

__all__ = ["mnist"]
