"""HierMambaConfig: every hyperparameter of the hierarchical Mamba model, typed and validated.

Glossary (code name -> HRM / Mamba paper symbol):
    H_cycles, L_cycles   N and T of HRM: N high-level updates, each after T low-level updates.
    invocation           one call of the H or the L stack: a full scan over the sequence.
    bptt_steps           how many trailing invocations carry gradient: an int, None (full BPTT), or a named
                         window: "one_step" (HRM: the last L and the last H call; 1 call when looped) or
                         "last_cycle" (TRM: the whole last H cycle, its L_cycles L calls and the H call).
    architecture         "hrm": H and L stacks; "looped": one stack L called num_invocations times
                         as z = L(z + x) (the no-hierarchy baseline; H_cycles=1, L_cycles=0 is a flat Mamba).
    h_memory_size        M: each H update also attends to the M most recent z_H at the same position.
    synthetic_gradients  predict the cut gradient at ACT segment boundaries (synthetic_gradients.py).
    act_training         how the puzzle head trains ACT segments: "one_segment" (HRM/TRM: each training
                         forward runs one segment of a carry kept across steps, one optimizer step per
                         segment, halted sequences replaced by the batch's new ones; act_stream.py) or
                         "all_segments" (every segment of a batch in one forward, one optimizer step).
    scale_embeddings     HRM's input scale: embeddings drawn with std 1/sqrt(d) and multiplied by sqrt(d),
                         so the injected x has unit RMS like z_H and z_L (False: std initializer_range,
                         no multiplier -- x then enters ~50x smaller than the states it is added to).
    no_act_continue      TRM's ``no_ACT_continue``: q_continue is held at 0 (halt iff q_halt > 0) and not
                         trained, so no extra segment computes its target. False: HRM's Q-learning.
    grid_shape           (rows, cols) of a grid input flattened row-major (puzzles); None for sequences.
    grid_scan_orders     the orders each block scans the grid in, each forward and reversed, summed:
                         "row" (the sequence as given), "col" (column-major), "box" (box-major, Sudoku's
                         boxes of box_shape). Anything beyond ("row",) needs grid_shape and bidirectional.
    position_embeddings  rows of a learned absolute position table added to the puzzle head's input
                         embeddings (0 = none). A real-decay scan cannot count positions modulo a
                         row length, so without it a grid cell cannot know its column or box.
    state_size           N of Mamba (d_state): size of the SSM state per channel / head.
    expand               E of Mamba: d_inner = expand * hidden_size.
    conv_kernel          width of the causal depthwise convolution (d_conv).
    head_dim             P of Mamba2: channels per SSM head; n_heads = d_inner / head_dim.
    n_groups             G of Mamba2: B and C are shared by n_heads / n_groups heads.
    chunk_size           Q of Mamba2's SSD: block length of the chunked scan.

Switches for a warm start from a pretrained Mamba (convert.py; with H_cycles = L_cycles = 1 the model is then
that Mamba, its first L_layers blocks forming L and the rest H):
    initial_states       "fixed" (HRM: frozen seeded H_init / L_init vectors, stored in the checkpoint) or "zeros"
                         (no parameters; z_H = z_L = 0, so the first L call sees x alone).
    L_final_norm         the L stack ends in an RMSNorm (True, HRM); False: z_L is the raw residual stream, and
                         H(z_L) continues the pretrained stack where L stopped. Needs architecture="hrm".
    residual_in_fp32     the blocks' residual stream in fp32 whatever the weights' dtype (transformers' and mamba_ssm's
                         residual_in_fp32; the norm and mixer run in the weights' dtype). No effect in fp32.
"""

from __future__ import annotations

import math

from transformers import PreTrainedConfig

from .grid import SCAN_ORDERS

MIXERS = ("mamba2", "mamba1")
SSM_BACKENDS = ("auto", "torch", "cuda")
ARCHITECTURES = ("hrm", "looped")
ACT_EVAL_MODES = ("max_steps", "q_halt")
ACT_TRAINING_MODES = ("one_segment", "all_segments")
LOSS_TYPES = ("softmax", "stablemax")
BPTT_WINDOWS = ("one_step", "last_cycle")
INITIAL_STATES = ("fixed", "zeros")


class HierMambaConfig(PreTrainedConfig):
    """Configuration of :class:`HierMambaModel` and its heads.

    Every invalid value raises ``ValueError`` naming the field. See the module docstring for the
    glossary; the defaults build a ~1M-parameter byte-level model.
    """

    model_type = "hier_mamba"
    # Outputs Trainer's evaluation loop drops from its predictions: the recurrent cache and z_H (b, l, d), which
    # would otherwise be gathered next to the logits for every evaluated batch.
    keys_to_ignore_at_inference = ["cache", "last_hidden_state"]

    def __init__(
        self,
        vocab_size: int = 256,
        hidden_size: int = 128,
        H_layers: int = 2,
        L_layers: int = 2,
        H_cycles: int = 2,
        L_cycles: int = 2,
        mixer: str = "mamba2",
        state_size: int = 64,
        expand: int = 2,
        conv_kernel: int = 4,
        head_dim: int = 32,
        n_groups: int = 1,
        chunk_size: int = 64,  # 64 beat 256 for the torch SSD on CPU (DESIGN.md)
        time_step_rank: int | str = "auto",  # mamba1 only: ceil(hidden_size / 16)
        time_step_min: float = 0.001,
        time_step_max: float = 0.1,
        time_step_floor: float = 1e-4,
        time_step_limit: tuple[float, float] = (0.0, float("inf")),
        use_conv_bias: bool = True,
        use_bias: bool = False,
        rms_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        scale_embeddings: bool = True,  # HRM: x reaches the stacks at the states' unit scale
        rescale_prenorm_residual: bool = True,
        initial_states: str = "fixed",  # HRM's frozen seeded vectors; "zeros" for a warm start (convert.py)
        L_final_norm: bool = True,
        residual_in_fp32: bool = False,
        tie_word_embeddings: bool = False,  # HRM's own head; tied measured worse (docs/results.md, LM head)
        use_cache: bool = True,
        bidirectional: bool = False,
        grid_shape: tuple[int, int] | None = None,
        grid_scan_orders: tuple[str, ...] = ("row",),
        box_shape: tuple[int, int] | None = None,
        bptt_steps: int | str | None = 2,
        checkpoint_cycles: bool = False,
        ssm_backend: str = "auto",
        architecture: str = "hrm",
        h_memory_size: int = 0,
        h_memory_heads: int = 4,
        synthetic_gradients: bool = False,
        synthetic_gradient_scale: float = 1.0,
        # reasoning head (HierMambaForTokenClassification): ACT and deep supervision
        halt_max_steps: int = 8,
        halt_exploration_prob: float = 0.1,
        act_eval_mode: str = "max_steps",
        no_act_continue: bool = False,
        act_training: str = "one_segment",  # HRM/TRM: one segment per optimizer step, the carry kept across steps
        loss_type: str = "softmax",
        position_embeddings: int = 0,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.H_layers = H_layers
        self.L_layers = L_layers
        self.H_cycles = H_cycles
        self.L_cycles = L_cycles
        self.mixer = mixer
        self.state_size = state_size
        self.expand = expand
        self.conv_kernel = conv_kernel
        self.head_dim = head_dim
        self.n_groups = n_groups
        self.chunk_size = chunk_size
        self.time_step_rank = math.ceil(hidden_size / 16) if time_step_rank == "auto" else time_step_rank
        self.time_step_min = time_step_min
        self.time_step_max = time_step_max
        self.time_step_floor = time_step_floor
        self.time_step_limit = tuple(time_step_limit)
        self.use_conv_bias = use_conv_bias
        self.use_bias = use_bias
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.scale_embeddings = scale_embeddings
        self.rescale_prenorm_residual = rescale_prenorm_residual
        self.initial_states = initial_states
        self.L_final_norm = L_final_norm
        self.residual_in_fp32 = residual_in_fp32
        self.use_cache = use_cache
        self.bidirectional = bidirectional
        self.grid_shape = None if grid_shape is None else tuple(grid_shape)
        self.grid_scan_orders = tuple(grid_scan_orders)
        self.box_shape = None if box_shape is None else tuple(box_shape)
        self.bptt_steps = bptt_steps
        self.checkpoint_cycles = checkpoint_cycles
        self.ssm_backend = ssm_backend
        self.architecture = architecture
        self.h_memory_size = h_memory_size
        self.h_memory_heads = h_memory_heads
        self.synthetic_gradients = synthetic_gradients
        self.synthetic_gradient_scale = synthetic_gradient_scale
        self.halt_max_steps = halt_max_steps
        self.halt_exploration_prob = halt_exploration_prob
        self.act_eval_mode = act_eval_mode
        self.no_act_continue = no_act_continue
        self.act_training = act_training
        self.loss_type = loss_type
        self.position_embeddings = position_embeddings
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_fields()

    # derived sizes ---------------------------------------------------------------------------
    @property
    def intermediate_size(self) -> int:
        """d_inner = expand * hidden_size."""
        return self.expand * self.hidden_size

    @property
    def num_heads(self) -> int:
        """Mamba2 heads: d_inner / head_dim."""
        return self.intermediate_size // self.head_dim

    @property
    def recorded_invocations(self) -> int | None:
        """bptt_steps as a number of trailing invocations (None: all of them)."""
        if self.bptt_steps == "one_step":
            return 1 if self.architecture == "looped" else 2
        if self.bptt_steps == "last_cycle":
            return self.L_cycles + 1
        return self.bptt_steps

    @property
    def embedding_multiplier(self) -> float:
        """Factor applied to the input embeddings: sqrt(hidden_size) with scale_embeddings (HRM), else 1."""
        return math.sqrt(self.hidden_size) if self.scale_embeddings else 1.0

    @property
    def embedding_init_std(self) -> float:
        """Std of the embedding tables' init: 1/sqrt(hidden_size) with scale_embeddings (HRM), else initializer_range."""
        return 1.0 / math.sqrt(self.hidden_size) if self.scale_embeddings else self.initializer_range

    @property
    def residual_layers(self) -> int:
        """Blocks that write to a residual stream (for the 1/sqrt(depth) init rescale)."""
        return self.L_layers + (self.H_layers if self.architecture == "hrm" else 0)

    @property
    def num_invocations(self) -> int:
        """Stack calls per forward: each H cycle runs L_cycles L calls and one H call."""
        return self.H_cycles * (self.L_cycles + 1)

    @property
    def num_hidden_layers(self) -> int:
        """Block applications per forward, one cache slot each (HrmText's count): the layers of every invocation.

        Read by transformers; ``output_hidden_states`` returns this many block outputs after the embeddings.
        """
        if self.architecture == "looped":
            return self.num_invocations * self.L_layers
        return self.H_cycles * (self.L_cycles * self.L_layers + self.H_layers)

    @num_hidden_layers.setter
    def num_hidden_layers(self, value) -> None:
        raise AttributeError(f"num_hidden_layers is derived from H_cycles, L_cycles, H_layers, L_layers and "
                             f"architecture (currently {self.num_hidden_layers}) and cannot be set to {value!r}: "
                             "set those fields instead")

    @property
    def layer_types(self) -> list[str] | None:
        """``"linear_attention"`` per cache slot (``num_hidden_layers`` entries), as ``Mamba2Config`` declares.

        Derived, not saved. transformers reads it to tell recurrent (padding-sensitive) layers from attention ones.
        None while the layer counts are invalid, so that ``validate_fields`` is the check that names the bad field.
        """
        count = self.num_hidden_layers
        return ["linear_attention"] * count if isinstance(count, int) and count > 0 else None

    # validation ------------------------------------------------------------------------------
    def validate_fields(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        for name in ("vocab_size", "hidden_size", "H_layers", "L_layers", "H_cycles",
                     "state_size", "expand", "head_dim", "n_groups", "chunk_size", "time_step_rank",
                     "halt_max_steps"):
            _check_positive_int(name, getattr(self, name))
        _check_choice("mixer", self.mixer, MIXERS)
        _check_choice("architecture", self.architecture, ARCHITECTURES)
        min_l_cycles = 1 if self.architecture == "hrm" else 0  # HRM injects x only through L
        if not isinstance(self.L_cycles, int) or isinstance(self.L_cycles, bool) or self.L_cycles < min_l_cycles:
            raise ValueError(f"L_cycles must be an int >= {min_l_cycles} for architecture={self.architecture!r}, "
                             f"got {self.L_cycles!r}")
        if not isinstance(self.h_memory_size, int) or self.h_memory_size < 0:
            raise ValueError(f"h_memory_size must be an int >= 0 (0 = off), got {self.h_memory_size!r}")
        if self.h_memory_size and self.architecture != "hrm":
            raise ValueError("h_memory_size needs architecture='hrm' (it attends over past H states)")
        if self.h_memory_size and (not isinstance(self.h_memory_heads, int) or self.h_memory_heads < 1
                                   or self.hidden_size % self.h_memory_heads):
            raise ValueError(f"h_memory_heads={self.h_memory_heads!r} must be a positive int dividing "
                             f"hidden_size={self.hidden_size}")
        if (not isinstance(self.position_embeddings, int) or isinstance(self.position_embeddings, bool)
                or self.position_embeddings < 0):
            raise ValueError(f"position_embeddings must be an int >= 0 (0 = none), got {self.position_embeddings!r}")
        if not self.synthetic_gradient_scale > 0:
            raise ValueError(f"synthetic_gradient_scale must be > 0, got {self.synthetic_gradient_scale!r}")
        self._validate_grid()
        _check_choice("ssm_backend", self.ssm_backend, SSM_BACKENDS)
        _check_choice("act_eval_mode", self.act_eval_mode, ACT_EVAL_MODES)
        _check_choice("act_training", self.act_training, ACT_TRAINING_MODES)
        _check_choice("loss_type", self.loss_type, LOSS_TYPES)
        _check_choice("initial_states", self.initial_states, INITIAL_STATES)
        if self.L_final_norm is False and self.architecture != "hrm":
            raise ValueError("L_final_norm=False needs architecture='hrm' (a looped model's head reads the L stack)")
        if not isinstance(self.conv_kernel, int) or not 2 <= self.conv_kernel <= 4:
            raise ValueError(f"conv_kernel must be an int in [2, 4] (the causal-conv1d kernel limit), got {self.conv_kernel!r}")
        conv_channels = self.intermediate_size + (2 * self.n_groups * self.state_size if self.mixer == "mamba2" else 0)
        if self.ssm_backend == "cuda" and conv_channels % 8:  # "auto" falls back to the torch conv instead
            raise ValueError(f"ssm_backend='cuda' needs conv channels divisible by 8 (causal-conv1d's kernel), got "
                             f"{conv_channels} (mamba1: expand*hidden_size; mamba2: that + 2*n_groups*state_size)")
        if self.mixer == "mamba2":
            if self.intermediate_size % self.head_dim:
                raise ValueError(f"head_dim={self.head_dim} must divide expand*hidden_size={self.intermediate_size}")
            if self.num_heads % self.n_groups:
                raise ValueError(f"n_groups={self.n_groups} must divide num_heads={self.num_heads}")
        if isinstance(self.bptt_steps, str):
            _check_choice("bptt_steps", self.bptt_steps, BPTT_WINDOWS)
            if self.bptt_steps == "last_cycle" and self.architecture != "hrm":
                raise ValueError("bptt_steps='last_cycle' needs architecture='hrm' (a looped stack has no H cycle)")
        elif self.bptt_steps is not None and (not isinstance(self.bptt_steps, int) or isinstance(self.bptt_steps, bool)
                                              or self.bptt_steps < 1):
            raise ValueError(f"bptt_steps must be None (full BPTT), an int >= 1 or one of {BPTT_WINDOWS}, "
                             f"got {self.bptt_steps!r}")
        for name in ("bidirectional", "scale_embeddings", "no_act_continue", "checkpoint_cycles", "synthetic_gradients",
                     "use_cache", "use_conv_bias", "use_bias", "rescale_prenorm_residual", "L_final_norm",
                     "residual_in_fp32"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not 0 < self.time_step_min <= self.time_step_max:
            raise ValueError(f"time_step_min={self.time_step_min} and time_step_max={self.time_step_max} "
                             "must satisfy 0 < time_step_min <= time_step_max")
        if not self.time_step_floor > 0:
            raise ValueError(f"time_step_floor must be > 0, got {self.time_step_floor!r}")
        if len(self.time_step_limit) != 2 or not 0 <= self.time_step_limit[0] < self.time_step_limit[1]:
            raise ValueError(f"time_step_limit must be (low, high) with 0 <= low < high, got {self.time_step_limit!r}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not 0.0 <= self.halt_exploration_prob <= 1.0:
            raise ValueError(f"halt_exploration_prob must be in [0, 1], got {self.halt_exploration_prob!r}")
        # pad_token_id indexes the embeddings; bos/eos are generation settings, unchecked as in transformers' configs
        value = getattr(self, "pad_token_id", None)
        if value is not None and not 0 <= value < self.vocab_size:
            raise ValueError(f"pad_token_id={value} is outside the vocabulary [0, {self.vocab_size})")

    def _validate_grid(self) -> None:
        for name in ("grid_shape", "box_shape"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                 and v > 0 for v in value)):
                raise ValueError(f"{name} must be None or two positive ints (rows, cols), got {value!r}")
        orders = self.grid_scan_orders
        if not orders or len(set(orders)) != len(orders) or any(o not in SCAN_ORDERS for o in orders):
            raise ValueError(f"grid_scan_orders must be distinct names from {SCAN_ORDERS}, got {orders!r}")
        if "row" not in orders:
            raise ValueError(f"grid_scan_orders must include 'row' (the block's own scan), got {orders!r}")
        if orders != ("row",) and (self.grid_shape is None or not self.bidirectional):
            raise ValueError(f"grid_scan_orders={orders!r} needs grid_shape and bidirectional=True "
                             f"(got grid_shape={self.grid_shape!r}, bidirectional={self.bidirectional!r})")
        if "box" in orders and (self.box_shape is None or self.grid_shape[0] % self.box_shape[0]
                                or self.grid_shape[1] % self.box_shape[1]):
            raise ValueError(f"grid_scan_orders with 'box' needs a box_shape dividing grid_shape={self.grid_shape!r}, "
                             f"got box_shape={self.box_shape!r}")


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
