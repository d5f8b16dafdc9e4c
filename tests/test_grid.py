"""Grid-aware scans: exact permutations, the row-only block == the bidirectional block, every order trained."""

import pytest
import torch

from hier_mamba import HierMambaConfig, HierMambaForTokenClassification
from hier_mamba.blocks import HierMambaBlock
from hier_mamba.grid import inverse_order, scan_order

BASE = dict(vocab_size=11, hidden_size=32, H_layers=1, L_layers=1, H_cycles=1, L_cycles=1, state_size=8,
            head_dim=16, chunk_size=16, bidirectional=True, use_cache=False)
SUDOKU = dict(grid_shape=(9, 9), box_shape=(3, 3))


def test_orders_are_permutations_with_exact_inverses():
    x = torch.randn(2, 81, 4)
    for order in ("row", "col", "box"):
        permutation = scan_order(order, (9, 9), (3, 3))
        assert sorted(permutation.tolist()) == list(range(81))
        assert torch.equal(x[:, permutation][:, inverse_order(permutation)], x)
    assert scan_order("col", (9, 9))[:9].tolist() == [9 * r for r in range(9)]  # first column, top to bottom
    assert scan_order("box", (9, 9), (3, 3))[:9].tolist() == [0, 1, 2, 9, 10, 11, 18, 19, 20]  # top-left box
    assert scan_order("col", (2, 3)).tolist() == [0, 3, 1, 4, 2, 5]  # non-square grids too


def test_row_only_grid_block_equals_the_bidirectional_block():
    torch.manual_seed(0)
    plain = HierMambaBlock(HierMambaConfig(**BASE))
    grid = HierMambaBlock(HierMambaConfig(**BASE, **SUDOKU, grid_scan_orders=("row",)))
    grid.load_state_dict(plain.state_dict())  # same parameter names: nothing extra
    x = torch.randn(2, 81, 32)
    expected = x + plain.mixer(plain.norm(x))[0] + plain.reverse_mixer(plain.norm(x).flip(1))[0].flip(1)
    torch.testing.assert_close(grid(x)[0], plain(x)[0], rtol=0, atol=0)
    torch.testing.assert_close(grid(x)[0], expected)


def test_column_order_scans_the_transposed_grid():
    """With the row scans silenced, the block is x + both scans over the grid read column by column."""
    torch.manual_seed(0)
    block = HierMambaBlock(HierMambaConfig(**BASE, grid_shape=(3, 5), grid_scan_orders=("row", "col")))
    with torch.no_grad():
        block.mixer.out_proj.weight.zero_()
        block.reverse_mixer.out_proj.weight.zero_()
    x = torch.randn(2, 15, 32)
    normed = block.norm(x).view(2, 3, 5, 32).transpose(1, 2).reshape(2, 15, 32)  # column-major sequence
    forward, reverse = block.grid_mixers["col"]
    scanned = forward(normed)[0] + reverse(normed.flip(1))[0].flip(1)  # (2, 15, d) column-major
    expected = x + scanned.view(2, 5, 3, 32).transpose(1, 2).reshape(2, 15, 32)
    torch.testing.assert_close(block(x)[0], expected)


def test_gradients_reach_every_order_and_cells_see_their_column_and_box_peers():
    torch.manual_seed(0)
    config = HierMambaConfig(**BASE, **SUDOKU, grid_scan_orders=("row", "col", "box"), position_embeddings=81)
    model = HierMambaForTokenClassification(config)
    ids = torch.randint(0, 11, (2, 81))
    model(ids, labels=ids).loss.backward()
    block = model.model.reasoner.L.layers[0]
    for name, mixer in [("row", block.mixer), ("row reversed", block.reverse_mixer),
                        *[(f"{order} {i}", m) for order, pair in block.grid_mixers.items() for i, m in enumerate(pair)]]:
        assert mixer.in_proj.weight.grad is not None and mixer.in_proj.weight.grad.abs().sum() > 0, name


def test_grid_config_is_validated_and_saved(tmp_path):
    for bad, match in [(dict(grid_scan_orders=("row", "col")), "grid_shape"),
                       (dict(**SUDOKU, grid_scan_orders=("row", "diagonal")), "grid_scan_orders"),
                       (dict(**SUDOKU, grid_scan_orders=("col",)), "include 'row'"),
                       (dict(grid_shape=(9, 9), box_shape=(2, 3), grid_scan_orders=("row", "box")), "box_shape"),
                       (dict(grid_shape=(9, 0)), "grid_shape")]:
        with pytest.raises(ValueError, match=match):
            HierMambaConfig(**BASE, **bad)
    with pytest.raises(ValueError, match="bidirectional"):
        HierMambaConfig(**{**BASE, "bidirectional": False}, **SUDOKU, grid_scan_orders=("row", "col"))
    config = HierMambaConfig(**BASE, **SUDOKU, grid_scan_orders=("row", "box"))
    config.save_pretrained(tmp_path)
    reloaded = HierMambaConfig.from_pretrained(tmp_path)
    assert (reloaded.grid_shape, reloaded.box_shape, reloaded.grid_scan_orders) == ((9, 9), (3, 3), ("row", "box"))
    model = HierMambaForTokenClassification(config).eval()
    with pytest.raises(ValueError, match="81 cells, got length 80"):
        model(torch.ones(1, 80, dtype=torch.long))


def test_grid_model_round_trips_through_from_pretrained(tmp_path):
    """from_pretrained builds on the meta device: the scan orders must not be state it leaves uninitialised."""
    torch.manual_seed(0)
    config = HierMambaConfig(**BASE, **SUDOKU, grid_scan_orders=("row", "col", "box"))
    model = HierMambaForTokenClassification(config).eval()
    model.save_pretrained(tmp_path)
    reloaded = HierMambaForTokenClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(1, 11, (2, 81))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
