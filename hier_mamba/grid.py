"""Scan orders over a 2-D grid flattened row-major: the permutations that make a 1-D scan grid-aware.

A Sudoku cell's column and box peers lie up to 72 positions away in row-major order; a scan in
column-major order makes a column contiguous, one in box-major order a 3 x 3 box (VMamba's
cross-scan and Vim scan images in several orders the same way). Each order is a permutation of the
``rows * cols`` positions: ``permuted = x[:, order]`` puts the cells in scan order and
``x = permuted[:, inverse]`` puts them back.

    "row"  row-major (the identity: the sequence as given)
    "col"  column-major: (r, c) visited as c * rows + r
    "box"  box-major: boxes of ``box_shape`` in row-major order, each box's cells row-major inside
"""

from __future__ import annotations

import torch

SCAN_ORDERS = ("row", "col", "box")


def scan_order(order: str, grid_shape: tuple[int, int], box_shape: tuple[int, int] | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Row-major positions in the visiting order of ``order``: (rows * cols,) int64 on ``device``.

    ``permuted = x[:, scan_order(...)]`` turns a row-major (b, rows * cols, d) sequence into scan order.
    """
    rows, cols = grid_shape
    grid = torch.arange(rows * cols, device=device).view(rows, cols)  # grid[r, c] = position of cell (r, c)
    if order == "row":
        return grid.reshape(-1)
    if order == "col":
        return grid.t().reshape(-1)
    if order == "box":
        if box_shape is None or rows % box_shape[0] or cols % box_shape[1]:
            raise ValueError(f"order 'box' needs a box_shape dividing grid_shape={grid_shape}, got {box_shape}")
        box_rows, box_cols = box_shape
        boxes = grid.view(rows // box_rows, box_rows, cols // box_cols, box_cols)  # (R, r, C, c)
        return boxes.permute(0, 2, 1, 3).reshape(-1)  # box index (R, C) major, cell (r, c) minor
    raise ValueError(f"scan order must be one of {SCAN_ORDERS}, got {order!r}")


def inverse_order(order: torch.Tensor) -> torch.Tensor:
    """The permutation that undoes ``order``: x[:, order][:, inverse_order(order)] == x."""
    return torch.argsort(order)
