"""Paper-scale self-blended training, for the minutes a GPU is lent (docs/training.md, "Long self-blended training").

The lent machine has PyTorch, timm and OpenCV but none of this project's other dependencies, no
data and no package weights, and what travels to it is at most 64 MiB with the repository. So the
run is cut in three, over two machines:

  pack   (here)    the faces the run needs, taken from the product's own extraction (re-framed MTCNN
                   crops and their dlib landmarks, `<split>-x.npy` and beside it), re-encoded as JPEG
                   q95 4:4:4 (mean absolute change 0.6 of 255 at 160 px) into plain arrays that
                   np.load reads without pickle, with the ImageNet start weights as safetensors;
  train  (device)  EfficientNet-Lite0 at the champion's 160 px, bf16 autocast and channels_last on
                   CUDA, each real face and a fresh blend of it in one batch under the same
                   augmentation (dfcl.data.sbi.SelfBlendedPairs, what the flow's self-blended
                   experience trains on), for about the reference's number of blends (100 epochs x
                   8 frames x 720 videos = 576k). Each configuration in --configs trains in its own
                   process beside the others. Every few epochs each model is scored on SBI
                   validation fakes of its selection set, which picks the epoch kept, and on every
                   scored set (the curve); writes gpu_sbi_<tag>.{json,md,png} and the kept and last
                   weights (fp16 safetensors, small enough to come back);
  score  (here)    the kept weights through the product's scoring on the ORIGINAL arrays (not the
                   JPEG copies) beside the CPU rows of generalization_choice_cpu.md.

    python benchmarks/gpu_sbi.py pack --out gpu_pack                     # here (.git/info/exclude it)
    python benchmarks/gpu_sbi.py train --pack gpu_pack --out $OUT        # on the GPU (benchmarks/gpu_sbi.sh)
    python benchmarks/gpu_sbi.py score --weights DIR                     # here, after
    bash benchmarks/gpu_sbi.sh --smoke                                   # all three at a toy size on CPU (tests)

Configurations: `ffpp` learns from FF++'s real training faces (the paper's setting) and keeps the
epoch with the best AUC on SBI fakes of LFW reals (a different camera domain, as issue 35 asks);
`ffpp_lfw` learns from FF++'s and LFW's reals (two cameras) and keeps its best epoch on SBI fakes
of FF++'s validation reals.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run as a script: the repo and sibling modules

FFPP = ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
# Selection set and training sets of each configuration (names of the pack's face sets).
CONFIGS = {"ffpp": {"train": ["ffpp_train"], "select": "lfw_val"},
           "ffpp_lfw": {"train": ["ffpp_train", "lfw_train"], "select": "ffpp_val"}}
JPEG = [1, 95]  # cv2.IMWRITE_JPEG_QUALITY, 95; 4:4:4 sampling is added where cv2 has it


# ---------------------------------------------------------------- pack (here)
def _encode(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    flags = JPEG + ([cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
                    if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR_444") else [])
    blobs = [cv2.imencode(".jpg", np.ascontiguousarray(f[:, :, ::-1]), flags)[1].ravel() for f in faces]
    return np.concatenate(blobs).astype(np.uint8), np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)


def write_set(out: Path, name: str, x: np.ndarray, y: np.ndarray, landmarks: np.ndarray | None = None) -> None:
    """One face set as `<name>.npz`: JPEG bytes and offsets, labels, landmarks (crop pixels)."""
    jpeg, offsets = _encode(x)
    arrays = {"jpeg": jpeg, "offsets": offsets, "y": np.asarray(y, np.int64)}
    if landmarks is not None:
        arrays["landmarks"] = np.asarray(landmarks, np.float32)
    np.savez(out / f"{name}.npz", **arrays)


def read_set(path: Path) -> dict:
    """A packed face set back: x (N, S, S, 3) uint8 RGB, y, and landmarks when packed."""
    import cv2

    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    jpeg, offsets = arrays.pop("jpeg"), arrays.pop("offsets")
    arrays["x"] = np.stack([cv2.imdecode(jpeg[a:b], cv2.IMREAD_COLOR)[:, :, ::-1] for a, b in zip(offsets, offsets[1:])])
    return arrays


def _load(paths: dict, split: str, count: int = 0) -> tuple:
    """The first `count` (0: all) faces of one split of an extracted method (dfcl.data.arrays.face_arrays)."""
    from dfcl.data.arrays import beside

    x = np.load(paths[f"{split}_x"], mmap_mode="r")
    y = np.load(paths[f"{split}_y"])
    points = beside(paths[f"{split}_x"], "landmarks")
    lm = np.load(points) if points.is_file() else None
    end = len(y) if not count else min(len(y), count)
    return np.asarray(x[:end]), y[:end], None if lm is None else lm[:end]


def scored_sets(params, data: Path, work: Path, unseen_cap: int) -> dict:
    """{name: (face arrays, splits)} of every set a model is scored on: generalization.py's."""
    from common import extract_once
    from generalization import UNSEEN

    from dfcl.config import apply_overrides

    sets = {m: (paths, ("test",)) for m, paths in extract_once(data / "ffpp-crops", work, params).items()}
    small = apply_overrides(params, [f"data.max_per_class={unseen_cap}"])
    sets.update({key: (next(iter(extract_once(data / folder, work, small).values())), splits)
                 for key, (folder, splits) in UNSEEN.items()})
    return sets


def pack(args) -> None:
    """Faces extracted as benchmarks/generalization.py extracts them (the same workspace finds its
    earlier extraction), LFW's reals extracted the same way, and the start weights, into --out."""
    from common import extract_once
    from safetensors.torch import save_file

    from dfcl.config import apply_overrides, load_params
    from models import create_model

    params = load_params(REPO / "params.yaml", args.set)
    out, data, work = Path(args.out), Path(args.data), Path(args.workspace)
    out.mkdir(parents=True, exist_ok=True)
    whole = apply_overrides(params, [f"data.max_per_class={args.sbi_cap}"])
    name = params.sbi.method
    sbi = extract_once(data / "ffpp-crops", work, whole, name=name)[name]
    write_set(out, "ffpp_train", *_load(sbi, "train"))
    x, y, lm = _load(sbi, "val")
    write_set(out, "ffpp_val", x[y == 0], y[y == 0], lm[y == 0])  # its reals: the blends are drawn at train time
    # LFW (one photo per person: its splits are by identity): training reals of ffpp_lfw, and the
    # validation reals that select ffpp's epoch.
    lfw = extract_once(data / "lfw-faces", work, whole, name=name)[name]
    write_set(out, "lfw_train", *_load(lfw, "train", args.lfw_train))
    x, y, lm = _load(lfw, "val")
    write_set(out, "lfw_val", x[y == 0][:args.lfw_val], y[y == 0][:args.lfw_val], lm[y == 0][:args.lfw_val])
    for key, (paths, splits) in scored_sets(params, data, work, args.unseen_cap).items():
        parts = [_load(paths, s)[:2] for s in splits]
        write_set(out, f"scored_{key}", np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    model = create_model("efficientnet_lite0", pretrained="imagenet")
    save_file(half(model), out / "start.fp16.safetensors")
    print(f"{out}: {sum(f.stat().st_size for f in out.iterdir()) / 2**20:.1f} MiB", flush=True)


def half(model) -> dict:
    """A model's state dict in float16, contiguous (channels_last weights are not), on the CPU."""
    return {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- train (device)
class EpochPairs:
    """SelfBlendedPairs of several face sets, with the epoch carried in the index (epoch * len + i):
    persistent data-loader workers hold their own copy of the dataset, so an attribute set in the
    main process would never reach them, and each epoch must draw fresh blends."""

    def __init__(self, parts: list):
        self.parts, self.sizes = parts, [len(p) for p in parts]
        self.length = sum(self.sizes)

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        epoch, i = divmod(index, self.length)
        for part, size in zip(self.parts, self.sizes):
            if i < size:
                part.epoch = epoch
                return part[i]
            i -= size
        raise IndexError(index)


def pair_batches(length: int, batch: int, epochs: int, seed: int):
    """Index lists of `batch` faces, each real (2k) beside its blend (2k+1), pairs shuffled every epoch."""
    rng = np.random.default_rng(seed)
    pairs = length // 2
    for epoch in range(epochs):
        order = rng.permutation(pairs)
        for a in range(0, pairs - batch // 2 + 1, batch // 2):  # whole batches only: batch norm sees full ones
            k = order[a:a + batch // 2]
            yield (epoch * length + np.stack([2 * k, 2 * k + 1], 1).ravel()).tolist()


def fixed_blends(faces: dict, seed: int) -> dict:
    """Validation fakes: one blend of each real face, drawn once (the same for every epoch)."""
    from dfcl.data.sbi import self_blend

    fakes = np.stack([self_blend(np.array(f), np.random.default_rng([seed, k]), faces["landmarks"][k])[0]
                      for k, f in enumerate(faces["x"])])
    return {"x": np.concatenate([faces["x"], fakes]), "y": np.r_[np.zeros(len(fakes)), np.ones(len(fakes))].astype(int)}


def probabilities(model, x: np.ndarray, device, batch: int = 512) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for a in range(0, len(x), batch):
            t = torch.from_numpy(np.ascontiguousarray(x[a:a + batch])).to(device).permute(0, 3, 1, 2).float().div_(255)
            out.append(model(t.contiguous(memory_format=torch.channels_last)).float().softmax(1)[:, 1].cpu())
    model.train()
    return torch.cat(out).numpy()


def auc(y, p) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(set(np.asarray(y).tolist())) == 2 else math.nan


def train_one(args, name: str) -> dict:
    """One configuration: its pairs, its schedule, its curve; the kept and the last weights."""
    import torch
    from safetensors.torch import load_file, save_file

    from dfcl.config import packaged_params
    from dfcl.data.sbi import SelfBlendedPairs
    from models import create_model

    config, pack_dir, out = CONFIGS[name], Path(args.pack), Path(args.out)
    import cv2

    # OpenCV on one thread, set before the data-loader workers fork: they already fill the cores, and
    # a thread pool forked mid-use (or resized in a child) can hang a worker.
    cv2.setNumThreads(1)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = True  # one input size throughout
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(args.work) / name  # the decoded arrays: not in $OUT, which comes back
    work.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, part in enumerate(config["train"]):  # SelfBlendedPairs reads the product's array layout
        faces = read_set(pack_dir / f"{part}.npz")
        for kind in ("x", "y", "landmarks"):
            np.save(work / f"{part}-{kind}.npy", faces[kind])
        parts.append(SelfBlendedPairs(work / f"{part}-x.npy", work / f"{part}-y.npy",
                                      augment=packaged_params().augment, seed=args.seed + i))
    data = EpochPairs(parts)
    select = fixed_blends(read_set(pack_dir / f"{config['select']}.npz"), args.seed)
    scored = {p.stem[len("scored_"):]: read_set(p) for p in sorted(pack_dir.glob("scored_*.npz"))}

    model = create_model("efficientnet_lite0")
    model.load_state_dict({k: v.float() for k, v in load_file(pack_dir / "start.fp16.safetensors").items()})
    model = model.to(device).to(memory_format=torch.channels_last)
    head = [p for n, p in model.named_parameters() if n.startswith("head.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    # The product's optimizer settings (params.yaml train), with the rate scaled for the larger batch.
    optimizer = torch.optim.AdamW([{"params": body, "lr": args.lr * 0.3}, {"params": head, "lr": args.lr}],
                                  weight_decay=1e-4)
    steps_per_epoch = (len(data) // 2) // (args.batch // 2)
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=pair_batches(len(data), args.batch, args.max_epochs, args.seed),
        num_workers=args.workers, pin_memory=device.type == "cuda", 
        prefetch_factor=4 if args.workers else None)
    # Epochs are fixed after the first one is timed: as many as fit --minutes (at most --max-epochs),
    # so the cosine schedule ends where the run does.
    epochs, total, step, start = args.max_epochs, None, 0, time.perf_counter()
    curve, best, images = [], (-1.0, -1), 0
    loss_fn = torch.nn.CrossEntropyLoss()
    for batch_x, batch_y in loader:
        epoch = step // steps_per_epoch
        if epoch >= epochs:
            break
        if total is None and step == steps_per_epoch:  # one epoch timed (start-up included: a margin)
            per_epoch = time.perf_counter() - start
            epochs = max(2, min(args.max_epochs, int(args.minutes * 60 * 0.85 / (per_epoch * 1.1))))
            total = epochs * steps_per_epoch
            print(f"[{name}] {per_epoch:.1f} s/epoch -> {epochs} epochs", flush=True)
        warm = steps_per_epoch * 0.3
        progress = step / (total or epochs * steps_per_epoch)
        scale = min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        for group, base in zip(optimizer.param_groups, (args.lr * 0.3, args.lr)):
            group["lr"] = base * scale
        x = batch_x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = batch_y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step, images = step + 1, images + len(y)
        if step % steps_per_epoch == 0:
            done = step // steps_per_epoch
            if done % max(1, epochs // args.points) == 0 or done == epochs:
                row = {"epoch": done, "blends": images // 2, "seconds": round(time.perf_counter() - start, 1),
                       "loss": round(loss.item(), 4), "select_auc": auc(select["y"], probabilities(model, select["x"], device))}
                row.update({k: auc(s["y"], probabilities(model, s["x"], device)) for k, s in scored.items()})
                curve.append(row)
                print(f"[{name}] " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in row.items()), flush=True)
                if row["select_auc"] > best[0]:
                    best = (row["select_auc"], done)
                    save_file(half(model), out / f"{name}.kept.fp16.safetensors")
    save_file(half(model), out / f"{name}.last.fp16.safetensors")
    seconds = time.perf_counter() - start
    return {"name": name, "train_sets": config["train"], "select_set": config["select"], "reals": len(data) // 2,
            "epochs": epochs, "blends": images // 2, "seconds": round(seconds, 1),
            "images_per_s": round(images / seconds, 1), "kept_epoch": best[1], "kept_select_auc": best[0],
            "curve": curve, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "settings": {k: getattr(args, k) for k in ("batch", "lr", "workers", "minutes", "max_epochs", "seed")}}


def train(args) -> None:
    """Every configuration in its own process, side by side; then the report."""
    import subprocess

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.configs.split(",")
    if args.only:  # a child: one configuration
        (Path(args.work) / f"{args.only}.json").write_text(json.dumps(train_one(args, args.only), indent=1))
        return
    Path(args.work).mkdir(parents=True, exist_ok=True)
    workers = max(0, args.workers // len(names)) if args.workers else 0
    children = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--only", n, "--workers", str(workers)])
                for n in names]
    codes = [c.wait() for c in children]
    runs = {n: json.loads((Path(args.work) / f"{n}.json").read_text()) for n, c in zip(names, codes) if c == 0}
    report(out, args.tag, runs, {n: c for n, c in zip(names, codes) if c})
    if any(codes):
        raise SystemExit(f"failed: {[n for n, c in zip(names, codes) if c]}")


def report(out: Path, tag: str, runs: dict, failed: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / f"gpu_sbi_{tag}.json").write_text(json.dumps({"tag": tag, "runs": runs, "failed": failed}, indent=1))
    lines = [f"# Self-blended training at paper scale ({tag})", "",
             "Device: " + ", ".join(sorted({r["device"] for r in runs.values()})) + ". Command: "
             "`python benchmarks/gpu_sbi.py train " + " ".join(sys.argv[2:]) + "`.", "",
             "AUC on the JPEG-q95 copies the device saw, at the kept epoch (best SBI-validation AUC on "
             "the selection set) and the last one.", "",
             "| config | reals | epochs | blends | img/s | kept epoch | select AUC | " + " | ".join(
                 k for k in next(iter(runs.values()))["curve"][0] if k not in {"epoch", "blends", "seconds", "loss", "select_auc"})
             + " |" if runs else "(no run finished)"]
    if runs:
        lines.append("|" + " --- |" * (lines[-1].count("|") - 1))
    for name, r in runs.items():
        keys = [k for k in r["curve"][0] if k not in {"epoch", "blends", "seconds", "loss", "select_auc"}]
        for label, row in (("kept", next(c for c in r["curve"] if c["epoch"] == r["kept_epoch"])), ("last", r["curve"][-1])):
            lines.append(f"| {name} ({label}) | {r['reals']} | {row['epoch']}/{r['epochs']} | {row['blends']} | "
                         f"{r['images_per_s']} | {r['kept_epoch']} | {row['select_auc']:.3f} | "
                         + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    if failed:
        lines += ["", f"Failed (exit codes): {failed}"]
    (out / f"gpu_sbi_{tag}.md").write_text("\n".join(lines) + "\n")
    if runs:
        fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False)
        for ax, (name, r) in zip(axes[0], runs.items()):
            for k in r["curve"][0]:
                if k not in {"epoch", "blends", "seconds", "loss"}:
                    ax.plot([c["blends"] for c in r["curve"]], [c[k] for c in r["curve"]], label=k,
                            lw=2.5 if k == "select_auc" else 1.2)
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
            ax.set(title=f"{name}: AUC vs blends trained", xlabel="blends", ylabel="AUC")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"gpu_sbi_{tag}.png", dpi=110)
    print((out / f"gpu_sbi_{tag}.md").read_text(), flush=True)


# ---------------------------------------------------------------- score (here)
def score(args) -> None:
    """The returned weights, scored by the product (benchmarks/common.auc_on) on the original arrays."""
    import torch
    from common import auc_on
    from safetensors.torch import load_file

    from dfcl.config import load_params
    from models import create_model

    params = load_params(REPO / "params.yaml", args.set)
    sets = scored_sets(params, Path(args.data), Path(args.workspace), args.unseen_cap)
    torch.set_num_threads(os.cpu_count() or 1)
    rows = {}
    for path in sorted(Path(args.weights).glob("*.fp16.safetensors")):
        if path.name.startswith("start."):
            continue
        model = create_model("efficientnet_lite0").eval()
        model.load_state_dict({k: v.float() for k, v in load_file(path).items()})
        rows[path.name] = {k: auc_on(model, "cpu", paths, splits) for k, (paths, splits) in sets.items()}
        print(path.name, {k: round(v, 3) for k, v in rows[path.name].items()}, flush=True)
    Path(args.weights, "scored_here.json").write_text(json.dumps(rows, indent=1) + "\n")
    keys = list(sets)
    section = ["", "## Scored here, on the original arrays (the product's scoring)", "",
               f"`python benchmarks/gpu_sbi.py score {' '.join(sys.argv[2:])}`", "",
               "| weights | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    section += [f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |" for name, row in rows.items()]
    for md in Path(args.weights).glob("gpu_sbi_*.md"):  # the device's report gets the section (once)
        text = md.read_text()
        text = text[:text.index(section[1])].rstrip("\n") + "\n" if section[1] in text else text
        md.write_text(text + "\n".join(section) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", required=True)
    p.add_argument("--sbi-cap", type=int, default=0, help="FF++ real faces per split for the blends (0: all)")
    p.add_argument("--lfw-train", type=int, default=1800)
    p.add_argument("--lfw-val", type=int, default=400)
    t = sub.add_parser("train")
    t.add_argument("--pack", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--tag", default="gpu")
    t.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "gpu_sbi"),
                   help="decoded faces and each configuration's own report (not --out: only results go back)")
    t.add_argument("--configs", default="ffpp,ffpp_lfw")
    t.add_argument("--only", default="")
    t.add_argument("--minutes", type=float, default=5.0, help="training time per configuration (they run side by side)")
    t.add_argument("--max-epochs", type=int, default=400)
    t.add_argument("--points", type=int, default=20, help="about this many scored epochs on the curve")
    t.add_argument("--batch", type=int, default=256)
    t.add_argument("--lr", type=float, default=0.002)
    t.add_argument("--workers", type=int, default=14)
    t.add_argument("--seed", type=int, default=0)
    for q in (p, s := sub.add_parser("score")):
        q.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
        q.add_argument("--workspace", default=str(REPO / "benchmarks" / ".work" / "generalization"),
                       help="where faces are extracted, once per setting (generalization.py's)")
        q.add_argument("-S", "--set", action="append", default=[],
                       help="params override; generalization_choice_cpu.md's rows: -S data.max_per_class=300")
        q.add_argument("--unseen-cap", type=int, default=100, help="faces per class of each never-trained set")
    s.add_argument("--weights", required=True, help="the folder the device's weights came back to")
    args = parser.parse_args()
    {"pack": pack, "train": train, "score": score}[args.command](args)


if __name__ == "__main__":
    main()
