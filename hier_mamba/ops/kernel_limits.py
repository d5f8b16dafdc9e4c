"""What mamba_ssm's and causal_conv1d's kernels accept (mamba-ssm 2.3.2, causal-conv1d 1.7.0).

Plain constants, importable without the kernels: ops/backend.py and ops/cuda_kernels.py read them to decide
which calls the kernels take and which fall back to the torch ops; tests/test_kernel_signatures.py checks them
against the packages' sources.
"""

CONV_CHANNEL_MULTIPLE = 8
"""causal_conv1d's channel-last kernel (the one that takes and returns states) needs channels % 8 == 0."""

CONV_WIDTHS = (2, 3, 4)
"""Conv widths causal_conv1d's kernels are compiled for."""


def split_conv_scan_fits(conv_channels: int, conv_width: int) -> bool:
    """Whether mamba_ssm's fused Mamba2 op (``mamba_split_conv1d_scan_combined``) takes a mixer: its conv runs
    causal_conv1d's channel-last kernel over the projection's (x, B, C) columns."""
    return conv_channels % CONV_CHANNEL_MULTIPLE == 0 and conv_width in CONV_WIDTHS
