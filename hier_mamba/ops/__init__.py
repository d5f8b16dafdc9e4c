"""Pure-PyTorch ops (the specification and the CPU path) and the dispatch to CUDA kernels."""

from .backend import Ops, TORCH_OPS, cuda_kernels_error, get_ops
from .conv import causal_conv1d, causal_conv1d_reference, causal_conv1d_step
from .selective_scan import (
    linear_recurrence, selective_scan, selective_scan_reference, selective_scan_sequential, selective_state_update,
)
from .split_conv import split_causal_conv1d
from .ssd import ssd_chunked, ssd_sequential, ssd_state_update

__all__ = [
    "Ops", "TORCH_OPS", "cuda_kernels_error", "get_ops",
    "causal_conv1d", "causal_conv1d_reference", "causal_conv1d_step",
    "linear_recurrence", "selective_scan", "selective_scan_reference", "selective_scan_sequential",
    "selective_state_update", "split_causal_conv1d",
    "ssd_chunked", "ssd_sequential", "ssd_state_update",
]
