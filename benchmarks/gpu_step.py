"""QuRe training step on the paper backbone: from raw images vs from cached frozen features.

Usage: ``python benchmarks/gpu_step.py [--device cpu|cuda] [--batch-size B] [--steps N]``

The full-size BLIP-2 ViT-L backbone (:class:`qure.models.blip2_vitl.Blip2VitLBackbone`:
23-block CLIP ViT-L/14 at 224 px, BERT-base Q-Former, 32 queries) with random weights
and a synthetic 30,522-token vocabulary. A step is the trainer's QuRe step: B queries,
each with its reference, target and one negative; query and image embeddings, max-over-
tokens scores, the reward loss ``-log σ((s_pos - s_neg)/τ)``, AdamW (lr 1e-5, weight decay
0.05) over every trainable parameter, fp16 autocast + GradScaler on CUDA.

* ``raw``: as the release does, every step runs the frozen ViT (no grad; fp16 autocast on
  CUDA, as LAVIS runs its fp16 ViT) on the 3B reference/target/negative images;
* ``cached``: the frozen features come from an fp16 table (as the memory-mapped feature
  cache stores them), so only ``ln_vision`` + Q-Former + heads run.

Each mode runs in its own child process, so peak memory (CUDA: max allocated; CPU: peak
RSS) is its own. Human-readable lines first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MODES = ("raw", "cached")


def _vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return specials + [f"w{i}" for i in range(30522 - len(specials))]


def run_mode(mode: str, device_name: str, batch_size: int, steps: int, warmup: int,
             overrides: dict) -> dict:
    import torch

    from qure.losses import reward_loss
    from qure.models.blip2_vitl import BertTextTokenizer, Blip2VitLBackbone, Blip2VitLConfig

    device = torch.device(device_name)
    torch.manual_seed(0)
    started = time.perf_counter()
    config = Blip2VitLConfig.from_dict(overrides)
    model = Blip2VitLBackbone(BertTextTokenizer(_vocab()), config).to(device).train()
    build_s = time.perf_counter() - started
    use_amp = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5, weight_decay=0.05)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    g = torch.Generator().manual_seed(1)
    size = config.image_size
    texts = [" ".join(f"w{int(i)}" for i in torch.randint(0, 30000, (12,), generator=g))
             for _ in range(batch_size)]
    pixels = torch.randn(3 * batch_size, 3, size, size, generator=g).to(device)
    table = None
    if mode == "cached":
        with torch.inference_mode():
            table = model.frozen_features(pixels).half().cpu()  # what the cache stores
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        if table is None:
            frozen = model.frozen_features(pixels)
        else:
            frozen = table.float().to(device, non_blocking=True)
        refs, images = frozen[:batch_size], frozen[batch_size:]
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            query = model.encode_queries(refs, texts).float()
            pos, neg = model.encode_images(images).float().split(batch_size)
            s_pos = torch.einsum("bd,btd->bt", query, pos).amax(-1)
            s_neg = torch.einsum("bd,btd->bt", query, neg).amax(-1)
            loss = reward_loss(s_pos, s_neg, model.temperature)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        peak_kind = "cuda_max_allocated_mib"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_kind = "peak_rss_mib"
    counts = model.parameter_counts()
    return {"mode": mode, "device": device_name, "batch_size": batch_size, "steps": steps,
            "step_s_mean": sum(times) / len(times), "step_s_min": min(times),
            "step_s": [round(t, 4) for t in times], peak_kind: round(peak, 1),
            "build_s": round(build_s, 2), "loss": loss, "threads": torch.get_num_threads(),
            "trainable_params": counts["trainable"], "frozen_params": counts["frozen"],
            "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when available")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="queries per step (default 32 on cuda, as QuRe; 2 on cpu)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per mode (default 20 on cuda, 2 on cpu)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (cpu only)")
    parser.add_argument("--config", default="{}",
                        help="JSON Blip2VitLConfig overrides (default: the paper model)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = args.batch_size or (32 if device == "cuda" else 2)
    steps = args.steps or (20 if device == "cuda" else 2)
    overrides = json.loads(args.config)

    if args.child:
        import torch

        if device == "cpu":
            torch.set_num_threads(args.threads)
        result = run_mode(args.child, device, batch, steps, args.warmup, overrides)
        print(json.dumps(result))
        return 0

    results = {}
    for mode in MODES:
        cmd = [sys.executable, __file__, "--child", mode, "--device", device,
               "--batch-size", str(batch), "--steps", str(steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads), "--config", args.config]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads)) if device == "cpu" else None
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            return out.returncode
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[mode]
        peak = r.get("cuda_max_allocated_mib", r.get("peak_rss_mib"))
        unit = "max allocated" if "cuda_max_allocated_mib" in r else "peak RSS"
        print(f"{mode:>6}: {r['step_s_mean']:.3f} s/step (min {r['step_s_min']:.3f}) at batch "
              f"{batch} on {r['device_name']}, {unit} {peak:.0f} MiB")
    speedup = results["raw"]["step_s_mean"] / results["cached"]["step_s_mean"]
    print(f"speed-up from cached frozen features: {speedup:.2f}x")
    print(json.dumps({"benchmark": "gpu_step", "device": device, "batch_size": batch,
                      "steps": steps, "speedup": round(speedup, 3), "modes": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
