"""GPU benchmark: hier_mamba against transformers' Mamba2ForCausalLM and mamba_ssm's MambaLMHeadModel.

    python benchmarks/bench_gpu.py [--json results.json] [--budget-s 60] [--dtypes bfloat16 float32] [--hidden 1024 ...]

All models with the same width, state and layer count (hier_mamba: layers/2 in L and in H, 1 x 1 cycles: one pass
through all layers), in each of ``--dtypes`` (bf16 first). Per model:
- train tok/s: forward + backward of the next-token loss, batch x length tokens per step (no
  optimizer step), best of ``--reps``;
- decode ms/token per decoding method: greedy generation at batch 1, the time of ``n2`` new tokens minus that of
  ``n1`` over n2 - n1 (the prompt's prefill cancels), best of ``--reps``. Methods: ``eager`` (every model's
  default generate); hier_mamba ``static`` (generate(cache_implementation="static") with a CompileConfig of
  mode="reduce-overhead": the decoding forward compiled and replayed as a CUDA graph) and ``compile_decoding``
  (model.compile_decoding(mode="reduce-overhead"), the default cache); mamba_ssm ``cg`` (generate(cg=True), its
  CUDA-graph decoding). The CUDA-graph methods run for ``--graph-dtypes`` only (bf16 by default: each build costs
  tens of seconds);
- decode bandwidth (eager): bytes of the weights each token reads (every nn.Linear call and embedding row,
  counted by forward hooks during one generated token; the small A, D, dt_bias, conv and norm
  weights and the recurrent states are left out, so this is a lower bound) per decode time, as a
  fraction of the device-to-device copy bandwidth measured here (and of the datasheet's, --peak-tb-s).

Variants of hier_mamba: ``torch`` ops; ``triton`` (mamba_ssm's Triton SSD scan and state updates,
torch conv: what runs where only the pure-Python mamba-ssm is installed); ``cuda`` (all kernels,
when the compiled extensions import: Mamba2 trains through mamba_ssm's fused whole-mixer op); and the HRM default
cycles (2 x 2) on the fastest backend. Without the compiled extensions, transformers' Mamba2 runs its torch path and
mamba_ssm's model its Triton kernels with torch convs (use_mem_eff_path=False): the "path" column says which ran.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import argparse
import contextlib
import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from harness import table, timed  # benchmarks/, beside this file (it also puts the checkout on sys.path)
from hier_mamba import HierMambaConfig, HierMambaForCausalLM

DEVICE = torch.device("cuda")  # --device cpu only to dry-run this script's code paths


def compiled_kernels() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("selective_scan_cuda", "causal_conv1d_cuda"))


def import_peers(kernels: bool):
    """The peers' classes. Without the compiled extensions, the import order matters: transformers'
    Mamba2 binds mamba_ssm's functions when imported (so before any stand-in: its torch path), then
    mamba_ssm with a stand-in for selective_scan_cuda (its Triton parts; causal_conv1d does not
    import, so its Mamba2 binds the torch conv), then a stand-in for causal_conv1d_cuda, which
    hier_mamba.ops.cuda_kernels needs to import (the triton variant never calls the conv kernel)."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    def stand_in(name):
        if not kernels and importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
    stand_in("selective_scan_cuda")
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    stand_in("causal_conv1d_cuda")
    return Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaLMHeadModel


@contextlib.contextmanager
def triton_backend():
    """Inside: ssm_backend='cuda' mixers use the Triton kernels and the torch conv / Mamba1 scan."""
    from hier_mamba import mixers
    from hier_mamba.ops import TORCH_OPS, Ops, cuda_kernels

    ops = Ops("triton", TORCH_OPS.conv, TORCH_OPS.conv_step, TORCH_OPS.selective_scan,
              cuda_kernels.selective_state_update, cuda_kernels.ssd, cuda_kernels.ssd_state_update)
    original = mixers.get_ops
    mixers.get_ops = lambda requested, device: ops if requested == "cuda" else original(requested, device)
    try:
        yield
    finally:
        mixers.get_ops = original


def sync_time(fn) -> float:
    """Seconds of one call of fn on DEVICE, synchronized before and after (harness.timed)."""
    return timed(fn, DEVICE)


def copy_bandwidth(gib: float = 2.0) -> float:
    """Device-to-device copy, bytes read + written per second (best of 5)."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * src.numel() / min(sync_time(lambda: dst.copy_(src)) for _ in range(5))


@contextlib.contextmanager
def count_weight_bytes(model, total: list):
    """Adds to total[0] the weight bytes of every nn.Linear call and embedding row looked up inside."""
    def linear(module, inputs, output):
        total[0] += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))

    def embedding(module, inputs, output):
        total[0] += inputs[0].numel() * module.weight.shape[1] * module.weight.element_size()

    handles = [m.register_forward_hook(linear if isinstance(m, torch.nn.Linear) else embedding)
               for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def build(name: str, args, peers, dtype: torch.dtype):
    """(model, loss(ids) -> scalar, {decoding method: generate(ids, new_tokens)}, path) for one variant."""
    Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaLMHeadModel = peers
    kernels = args.kernels
    torch.manual_seed(0)
    if name.startswith("hier_mamba"):
        backend, cycles = name.split("[")[1].split("]")[0].split(", ")
        h_cycles, l_cycles = map(int, cycles.split("x"))
        config = HierMambaConfig(vocab_size=args.vocab, hidden_size=args.hidden, mixer="mamba2", state_size=args.state,
                                 head_dim=64, chunk_size=args.chunk, H_layers=args.layers // 2, L_layers=args.layers // 2,
                                 H_cycles=h_cycles, L_cycles=l_cycles,
                                 ssm_backend="torch" if backend == "torch" else "cuda")
        model = HierMambaForCausalLM(config).to(DEVICE, dtype)
        scope = triton_backend if backend == "triton" else contextlib.nullcontext

        def loss(ids):
            with scope():
                return model(ids, labels=ids).loss

        def generate(ids, n, **options):
            with scope():
                return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                                      **options)

        def compiled_decoding(ids, n):
            model.compile_decoding(mode="reduce-overhead")  # kept across calls: built once, then replayed
            return generate(ids, n)
        from transformers import CompileConfig

        graphs = CompileConfig(fullgraph=True, dynamic=False, mode="reduce-overhead")
        decoders = {"eager": lambda ids, n: generate(ids, n),
                    "static": lambda ids, n: generate(ids, n, cache_implementation="static", compile_config=graphs),
                    "compile_decoding": compiled_decoding}
        return model, loss, decoders, backend
    if name == "transformers Mamba2":
        config = Mamba2Config(vocab_size=args.vocab, hidden_size=args.hidden, state_size=args.state, head_dim=64,
                              num_heads=2 * args.hidden // 64, n_groups=1, num_hidden_layers=args.layers,
                              chunk_size=args.chunk, pad_token_id=0, eos_token_id=None, bos_token_id=None)
        model = Mamba2ForCausalLM(config).to(DEVICE, dtype)
        path = "kernels" if kernels else "torch"  # what it bound at import: mamba_ssm if that imported
        return (model, lambda ids: model(ids, labels=ids).loss,
                {"eager": lambda ids, n: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)},
                path)
    config = MambaConfig(d_model=args.hidden, n_layer=args.layers, vocab_size=args.vocab,
                         ssm_cfg=dict(layer="Mamba2", d_state=args.state, headdim=64, chunk_size=args.chunk,
                                      use_mem_eff_path=kernels))
    model = MambaLMHeadModel(config, device=DEVICE, dtype=dtype)

    def loss(ids):
        logits = model(ids).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    return (model, loss, {"eager": lambda ids, n: model.generate(ids, max_length=ids.shape[1] + n, top_k=1),
                          "cg": lambda ids, n: model.generate(ids, max_length=ids.shape[1] + n, top_k=1, cg=True)},
            "kernels" if kernels else "triton + torch conv")


def measure(name: str, args, peers, bandwidth: float, dtype: torch.dtype) -> dict:
    model, loss, decoders, path = build(name, args, peers, dtype)
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(1, args.vocab, (args.batch, args.length), device=DEVICE)

    def train_step():
        model.zero_grad(set_to_none=True)
        loss(ids).backward()
    model.train()
    train_step()  # warm-up (Triton compiles here)
    train_s = min(sync_time(train_step) for _ in range(args.reps))
    model.zero_grad(set_to_none=True)
    model.eval()
    prompt = ids[:1, :args.prompt]
    result = dict(path=path, params=params, train_tok_s=args.batch * args.length / train_s, decode_ms={})
    graph_dtypes = [getattr(torch, name) for name in args.graph_dtypes]
    with torch.no_grad():
        for method, generate in decoders.items():
            if method != "eager" and dtype not in graph_dtypes:
                continue
            try:
                generate(prompt, args.n1), generate(prompt, args.n2)  # warm-up (and the CUDA-graph builds)
                t1 = min(sync_time(lambda: generate(prompt, args.n1)) for _ in range(args.reps))
                t2 = min(sync_time(lambda: generate(prompt, args.n2)) for _ in range(args.reps))
                result["decode_ms"][method] = 1e3 * (t2 - t1) / (args.n2 - args.n1)
            except Exception as error:  # reported; the other methods still run
                result["decode_ms"][method] = f"{type(error).__name__}: {error}"[:300]
        if hasattr(model, "compile_decoding"):
            model.compile_decoding(False)
        counted, more = [0], [0]
        with count_weight_bytes(model, counted):
            decoders["eager"](prompt, args.n1)
        with count_weight_bytes(model, more):
            decoders["eager"](prompt, args.n1 + 1)
    token_bytes = more[0] - counted[0]  # the weights one more generated token reads
    eager_ms = result["decode_ms"].get("eager")
    if isinstance(eager_ms, float):
        result.update(decode_weight_bytes=token_bytes, decode_bw_fraction=token_bytes / (eager_ms / 1e3) / bandwidth,
                      decode_bw_fraction_datasheet=token_bytes / (eager_ms / 1e3) / (args.peak_tb_s * 1e12))
    del model
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--state", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--n1", type=int, default=8)
    parser.add_argument("--n2", type=int, default=40)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--peak-tb-s", type=float, default=4.8, help="datasheet memory bandwidth (H200: 4.8)")
    parser.add_argument("--budget-s", type=float, default=60.0, help="skip the remaining variants after this")
    parser.add_argument("--variants", nargs="+", default=None)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32"])
    parser.add_argument("--graph-dtypes", nargs="+", default=["bfloat16"],
                        help="dtypes for which the CUDA-graph decoding methods run")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the code paths (tiny sizes), no numbers")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    kernels = args.kernels = compiled_kernels()  # before import_peers may stub one of them
    peers = import_peers(kernels)
    best = "cuda" if kernels else "triton"  # the most informative first: a budget may cut the tail
    main_variants = [f"hier_mamba[{best}, 1x1]", "transformers Mamba2", "mamba_ssm MambaLMHeadModel"]
    extra_variants = [f"hier_mamba[{best}, 2x2]", "hier_mamba[torch, 1x1]"]
    extra_variants += ["hier_mamba[triton, 1x1]"] if kernels else []
    # the most informative first, as a budget may cut the tail: the comparison in every dtype, then the others
    runs = ([(variant, dtype) for dtype in args.dtypes for variant in args.variants] if args.variants else
            [(variant, dtype) for dtype in args.dtypes for variant in main_variants]
            + [(variant, args.dtypes[0]) for variant in extra_variants])
    bandwidth = copy_bandwidth(2.0 if DEVICE.type == "cuda" else 0.01)
    results = dict(device=torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu", torch=torch.__version__, compiled_kernels=kernels,
                   copy_bandwidth_tb_s=bandwidth / 1e12, args={k: str(v) for k, v in vars(args).items()}, models={})
    print(f"{results['device']}: copy bandwidth {bandwidth / 1e12:.2f} TB/s; compiled kernels: {kernels}", flush=True)
    start = time.perf_counter()
    for variant, dtype_name in runs:
        name = f"{variant} {dtype_name}"
        if time.perf_counter() - start > args.budget_s:
            results["models"][name] = dict(skipped=f"over the {args.budget_s:.0f} s budget")
            continue
        try:
            results["models"][name] = measure(variant, args, peers, bandwidth, getattr(torch, dtype_name))
        except Exception as error:  # reported; the other variants still run
            results["models"][name] = dict(error=f"{type(error).__name__}: {error}"[:500])
        print(f"{name}: {results['models'][name]}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    rows = []
    for name, r in results["models"].items():
        if "train_tok_s" in r:
            decode = ", ".join(f"{ms:.2f} ({method})" if isinstance(ms, float) else f"{method}: {ms}"
                               for method, ms in r["decode_ms"].items())
            bandwidth_cells = ([f"{r['decode_weight_bytes'] / 2**20:.0f} MiB", f"{r['decode_bw_fraction']:.3f} / "
                                f"{r['decode_bw_fraction_datasheet']:.3f}"] if "decode_weight_bytes" in r else ["-", "-"])
            rows.append([name, r["path"], f"{r['params'] / 1e6:.1f} M", f"{r['train_tok_s']:,.0f}", decode,
                         *bandwidth_cells])
        else:  # skipped or failed: what happened, in the second cell
            rows.append([name, r, "-", "-", "-", "-", "-"])
    print(table(["model", "path", "params", "train tok/s", "decode ms/token (method)", "weight bytes/token",
                 "BW fraction eager (copy / datasheet)"], rows))


if __name__ == "__main__":
    main()
