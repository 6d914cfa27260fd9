"""How well the mask head (models/mask.py, `model.mask_head: true`) finds WHERE a face is forged.

Two trainings through the learner (dfcl.learning.learner.train_sequence: the pipeline's strategy and
plugins, MaskLoss among them), each scored on held-back faces whose masks are known, with pixel
ROC AUC and IoU at 0.5 (dfcl.data.masks.mask_quality):

  * sbi: EfficientNet-Lite0 from ImageNet (the default detector) with a mask head, learning the
    self-blended experience of `ffpp-crops`' real faces (`sbi.method`: reals only, SBI fakes
    blended every epoch, their blend masks as targets); scored on that experience's fixed SBI
    test fakes (`test-mask.npy`: blends of test reals the training never saw), and, without more
    training, on the demo's synthetic forgeries (another domain: drawn faces);
  * demo: the demo's small CNN at 64 px with a mask head, learning the three synthetic methods in
    sequence with their masks (dfcl/data/demo_data.py --masks); scored on each method's test fakes
    after the last one (earlier methods: after forgetting).

Beside each, a mask that knows nothing about the face it is given: the mean training target
(for SBI the validation fakes' masks, for the demo its training fakes'), the same map for every
face. SBI masks always cover the inner face, so this prior is already good; the head is worth
something where it beats it.

    python benchmarks/mask_head.py [--cap 150] [--tag cpu] [-S key=value ...]

Writes benchmarks/results/mask_head_<tag>.{md,json}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run as a script: the repo and sibling modules
from common import extract_once, machine, save_results  # noqa: E402

FFPP_CROPS = REPO.parent / "shared" / "data" / "ffpp-crops"
DEMO = ["BlendSwap", "GANUpsample", "MouthWarp"]


def predicted(model, name: str, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Mask probabilities (N, S, S) of uint8 faces (N, S, S, 3)."""
    import torch

    from models.mask import predict_mask

    model = model.to("cpu").eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            t = torch.from_numpy(np.ascontiguousarray(x[start:start + batch])).permute(0, 3, 1, 2).float() / 255
            out.append(predict_mask(model, name, t)[1].numpy())
    return np.concatenate(out)


def targets(y: np.ndarray, stored: np.ndarray | None) -> np.ndarray:
    from dfcl.data.masks import target_mask

    size = stored.shape[1]
    return np.stack([target_mask(int(label), size, None if stored is None else row) for label, row in zip(y, stored)])


def scores(probs: np.ndarray, truth: np.ndarray, y: np.ndarray, prior: np.ndarray) -> dict:
    """The head's and the prior's mask quality on the fakes, and the head's on all faces (reals'
    pixels count as untouched: false alarms on real faces lower it)."""
    from dfcl.data.masks import mask_quality

    fakes = y == 1
    head, base = mask_quality(probs[fakes], truth[fakes]), mask_quality(np.broadcast_to(prior, truth[fakes].shape), truth[fakes])
    return {"faces": head["faces"], "pixel_auc": head["pixel_auc"], "iou": head["iou"],
            "pixel_auc_with_reals": mask_quality(probs, truth)["pixel_auc"],
            "prior_pixel_auc": base["pixel_auc"], "prior_iou": base["iou"]}


def spec_of(folder: Path, root: Path, name: str, val: bool = True):
    from dfcl.data.arrays import ExperienceSpec

    rel = folder.relative_to(root)
    splits = ("train", "val", "test") if val else ("train", "test")
    return ExperienceSpec(key=name, dataset=name, method=name, version="benchmark",
                          **{f"{s}_{a}": str(rel / f"{s}-{a}.npy") for s in splits for a in "xy"})


def demo_arrays(work: Path, params: dict) -> dict[str, Path]:
    """The demo's methods as face arrays with masks ({method: folder}), read straight from the
    images it writes (taken whole, as the demo takes them) and the masks `--masks` writes."""
    import cv2

    from dfcl.data.demo_data import generate

    d = params.demo
    raw, masks, out = work / "demo", work / "demo-masks", work / "demo-arrays"
    if not (out / DEMO[-1] / "test-mask.npy").is_file():
        generate(raw, DEMO, d["train_per_class"], d["test_per_class"], d["size"], d["seed"], masks=masks)
        for method in DEMO:
            (out / method).mkdir(parents=True, exist_ok=True)
            for split in ("train", "test"):
                x, y, m = [], [], []
                for label, cls in ((0, "real"), (1, method)):
                    for f in sorted((raw / method / split / cls).glob("*.jpg")):
                        x.append(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB))
                        y.append(label)
                        m.append(cv2.imread(str(masks / method / split / cls / f"{f.stem}.png"), 0) if label
                                 else np.zeros(x[-1].shape[:2], np.uint8))
                np.save(out / method / f"{split}-x.npy", np.stack(x))
                np.save(out / method / f"{split}-y.npy", np.array(y, np.int64))
                np.save(out / method / f"{split}-mask.npy", np.stack(m))
    return {m: out / m for m in DEMO}


def resized(x: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA if f.shape[0] > size else cv2.INTER_LINEAR)
                     for f in x])


def run_sbi(work: Path, params: dict, demo: dict[str, Path]) -> dict:
    from dfcl.learning.learner import train_sequence

    name = params.sbi.method
    t = time.perf_counter()
    arrays = extract_once(FFPP_CROPS, work, params, name=name)[name]
    extract_s = time.perf_counter() - t
    folder = Path(arrays["train_x"]).parent
    root = folder.parents[1]
    learner, report = train_sequence([spec_of(folder, root, name)], params, work / "learner-sbi", root)
    model, arch = learner.strategy.model, params.model.name
    val_y, val_m = np.load(folder / "val-y.npy"), np.load(folder / "val-mask.npy")
    prior = targets(val_y, val_m)[val_y == 1].clip(0).mean(0)
    x, y = np.load(folder / "test-x.npy"), np.load(folder / "test-y.npy")
    out = {"extract_seconds": round(extract_s, 1), "train_seconds": round(report["train_seconds"], 1),
           "train_faces": int((np.load(folder / "train-y.npy") == 0).sum()),
           "test_auc": report["avg_auc"],
           "sbi_test": scores(predicted(model, arch, x), targets(y, np.load(folder / "test-mask.npy")), y, prior)}
    size = x.shape[1]
    for method, f in demo.items():  # another domain: nothing of it was trained on
        dx, dy = np.load(f / "test-x.npy"), np.load(f / "test-y.npy")
        truth = targets(dy, resized(np.load(f / "test-mask.npy"), size))
        out[f"demo_{method}"] = scores(predicted(model, arch, resized(dx, size)), truth, dy, prior)
    return out


def run_demo(work: Path, params: dict, demo: dict[str, Path]) -> dict:
    from dfcl.learning.learner import train_sequence

    root = work / "demo-arrays"
    specs = [spec_of(f, root, m, val=False) for m, f in demo.items()]
    learner, report = train_sequence(specs, params, work / "learner-demo", root)
    model, arch = learner.strategy.model, params.model.name
    out = {"train_seconds": round(report["train_seconds"], 1), "test_auc": report["avg_auc"]}
    for method, f in demo.items():
        ty, tm = np.load(f / "train-y.npy"), np.load(f / "train-mask.npy")
        prior = targets(ty, tm)[ty == 1].clip(0).mean(0)
        x, y = np.load(f / "test-x.npy"), np.load(f / "test-y.npy")
        out[method] = scores(predicted(model, arch, x), targets(y, np.load(f / "test-mask.npy")), y, prior)
    return out


def table(rows: dict[str, dict]) -> str:
    lines = ["| faces scored | model | fakes | pixel AUC | IoU @0.5 | pixel AUC with reals | prior pixel AUC | prior IoU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for what, model, r in rows:
        lines.append(f"| {what} | {model} | {r['faces']} | {r['pixel_auc']:.3f} | {r['iou']:.3f} | "
                     f"{r['pixel_auc_with_reals']:.3f} | {r['prior_pixel_auc']:.3f} | {r['prior_iou']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap", type=int, default=150, help="data.max_per_class of the SBI extraction (real faces per split)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dfcl-mask-bench",
                        help="extracted faces and learners (reused between runs)")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="over both trainings")
    args = parser.parse_args()

    from dfcl.config import load_params

    common = ["model.mask_head=true", *args.set]
    sbi_params = load_params(REPO / "params.yaml", [f"data.max_per_class={args.cap}", *common])
    demo_params = load_params(REPO / "params.yaml", [*load_params(REPO / "params.yaml").demo.overrides, *common])
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    demo = demo_arrays(args.work, demo_params)
    results = {"sbi": run_sbi(args.work, sbi_params, demo), "demo": run_demo(args.work, demo_params, demo)}
    seconds = time.perf_counter() - start
    command = "python benchmarks/mask_head.py " + " ".join(sys.argv[1:])
    sp, dp, s = sbi_params, demo_params, results["sbi"]
    rows = [("SBI test fakes (held back)", "Lite0 on SBI", s["sbi_test"])]
    rows += [(f"demo {m} test fakes (another domain)", "Lite0 on SBI", s[f"demo_{m}"]) for m in DEMO]
    rows += [(f"demo {m} test fakes", "small CNN on the demo", results["demo"][m]) for m in DEMO]
    text = f"""# Mask head: where the forgery is (pixel AUC, IoU)

`{command}` ({seconds / 60:.1f} min in all), on {machine()['platform']}, {machine()['cpu_cores']} CPU cores shared
with other work (timings are not speed measurements). What it runs: the docstring of `benchmarks/mask_head.py`.

- **Lite0 on SBI**: `{sp.model.name}` from `{sp.model.pretrained}` at {sp.data.image_size} px with a
  mask head (`train.mask_loss_weight={sp.train.mask_loss_weight}`), {sp.train.epochs} epochs of the
  self-blended experience of `ffpp-crops` ({s['train_faces']} real training faces, one fresh SBI fake of each per
  epoch; faces re-framed by MTCNN at margin {sp.faces.margin}, dlib landmarks), {s['train_seconds']:.0f} s of
  training; its real-vs-SBI test AUC {s['test_auc']:.3f}.
- **small CNN on the demo**: the demo's settings (`demo.overrides`: {dp.model.name} at
  {dp.data.image_size} px, {dp.train.epochs} epochs) with a mask head, strategy
  `{dp.strategy.name}`, BlendSwap -> GANUpsample -> MouthWarp with their masks, scored after the last;
  mean test AUC {results['demo']['test_auc']:.3f}.
- A pixel is forged where its target mask (scaled to its peak) is >= 0.5; pixel AUC over the fakes' pixels, IoU of
  the predicted mask at 0.5 averaged over the fakes. "with reals": the reals' pixels join as untouched ones.
  "prior": the mean training (SBI: validation) fake mask, the same for every face.

{table(rows)}
"""
    save_results(REPO / "benchmarks" / "results", f"mask_head_{args.tag}",
                 {"command": command, "seconds": round(seconds, 1), "machine": machine(), "results": results}, text)


if __name__ == "__main__":
    main()
