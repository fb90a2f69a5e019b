"""``docs/RESULTS.md``'s tables and figure from the experiments' results, and the built-in model's weights.

:func:`write` puts the results (``results/moving_shapes.json``), the figure
(``results/moving_shapes.png``) and the tables between the ``<!-- results:begin -->`` and
``<!-- results:end -->`` markers of ``RESULTS.md`` in the results folder (the text around them is
written by hand and kept). Every value is the mean over the training seeds with the lowest and
highest seed in brackets; a verdict says "better"/"worse" only when every seed of one side beats
every seed of the other, else "no clear difference".
"""
from __future__ import annotations

import json
import math
import os
import shutil

import torch

from ..default_model import atomic_folder
from . import data

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model")
NOISE_NAMES = {"iid": "i.i.d.", "mixed": "mixed", "progressive": "progressive"}
ARCH_NAMES = {"inflated": "Tune-A-Video inflation", "motion_adapter": "AnimateDiff motion adapter"}
LOWER_IS_BETTER = {"jitter", "frechet", "track_error", "pixel_diversity"}


# ----------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------
def _values(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])]


def cell(rows: list[dict], key: str, digits: int = 2) -> str:
    values = _values(rows, key)
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def verdict(a: list[dict], b: list[dict], key: str) -> str:
    """How side ``a`` compares with side ``b`` on ``key`` over the seeds."""
    va, vb = _values(a, key), _values(b, key)
    if not va or not vb:
        return "-"
    lower = key in LOWER_IS_BETTER
    if (max(va) < min(vb)) if lower else (min(va) > max(vb)):
        return "better, every seed"
    if (min(va) > max(vb)) if lower else (max(va) < min(vb)):
        return "worse, every seed"
    return "no clear difference"


def _by(results: list[dict], **match) -> list[dict]:
    return [r for r in results if all(r.get(k) == v for k, v in match.items())]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


PYOCO_COLUMNS = [("caption", "caption", 2), ("colour", "colour", 2), ("shape", "shape", 2),
                 ("direction", "direction", 2), ("consistency", "consistency", 2), ("jitter px", "jitter", 2),
                 ("Frechet", "frechet", 1), ("pixel consistency", "pixel_frame_consistency", 1),
                 ("pixel diversity", "pixel_diversity", 1)]
ADAPTER_COLUMNS = [("caption", "caption", 2), ("colour", "colour", 2), ("shape", "shape", 2),
                   ("direction", "direction", 2), ("consistency", "consistency", 2),
                   ("Frechet to the sub-domain", "frechet", 1), ("size px", "size", 1), ("speed px/frame", "speed", 2)]
ONESHOT_COLUMNS = [("caption", "caption", 2), ("colour", "colour", 2), ("shape", "shape", 2),
                   ("source direction", "direction", 2), ("track error px", "track_error", 2),
                   ("consistency", "consistency", 2)]


def pyoco_rows(results: list[dict]) -> dict[str, list[dict]]:
    """Config name -> per-seed score dicts, for the noise-prior table (real clips first)."""
    rows: dict[str, list[dict]] = {}
    reference = _by(results, experiment="reference")
    if reference:
        for name, label in (("real", "real clips"), ("real through the VAE", "real clips through the VAE")):
            rows[label] = list(reference[0]["scores"][name].values())
    for r in _by(results, experiment="pyoco", arch="zero-shot"):
        rows.setdefault("inflated prior, no video training", []).append(r["scores"])
    for arch in ARCH_NAMES:
        for noise in NOISE_NAMES:
            found = [r["scores"] for r in _by(results, experiment="pyoco", arch=arch, noise=noise)]
            if found:
                rows[f"{ARCH_NAMES[arch]}, {NOISE_NAMES[noise]} noise"] = found
    return rows


def adapter_rows(results: list[dict], split: str) -> dict[str, list[dict]]:
    """Config name -> per-seed score dicts: the small model alone, composed (by lambda), the prior alone."""
    def order(name: str):
        return (name != "small model alone", name == "prior alone", name)

    return _rows_of(_by(results, experiment="adapter"), lambda r: r["scores"][split], order)


def oneshot_rows(results: list[dict]) -> dict[str, list[dict]]:
    from .experiments import ONESHOT_CONFIGS

    def order(name: str):
        return (ONESHOT_CONFIGS.index(name) if name in ONESHOT_CONFIGS else len(ONESHOT_CONFIGS), name)

    return _rows_of(_by(results, experiment="oneshot"), lambda r: r["scores"], order)


def _rows_of(jobs: list[dict], configs, order) -> dict[str, list[dict]]:
    """Config name -> its score dict in every job, in ``order`` (not the order of a results file,
    whose keys are sorted)."""
    rows: dict[str, list[dict]] = {}
    for job in jobs:
        for name, row in configs(job).items():
            rows.setdefault(name, []).append(row)
    return {name: rows[name] for name in sorted(rows, key=order)}


def _config_table(rows: dict[str, list[dict]], columns) -> list[str]:
    return _table(["configuration"] + [c[0] for c in columns],
                  [[name] + [cell(values, key, digits) for _, key, digits in columns] for name, values in rows.items()])


def claims(results: list[dict]) -> list[list[str]]:
    """One row per tested claim: seed paper, claim, pair, metric, both sides, verdict."""
    out = []
    pyoco = pyoco_rows(results)
    for arch in ARCH_NAMES:
        iid = pyoco.get(f"{ARCH_NAMES[arch]}, i.i.d. noise", [])
        for noise in ("mixed", "progressive"):
            other = pyoco.get(f"{ARCH_NAMES[arch]}, {noise} noise", [])
            for metric in ("caption", "consistency", "frechet"):
                out.append(["PYoCo", "fine-tuning an image model into a video model with correlated noise beats i.i.d. "
                            "noise", f"{ARCH_NAMES[arch]}: {noise} vs i.i.d.", metric, cell(other, metric, 2),
                            cell(iid, metric, 2), verdict(other, iid, metric)])
    for split in ("in-domain", "out-of-domain"):
        rows = adapter_rows(results, split)
        small = rows.get("small model alone", [])
        for name, values in rows.items():
            if not name.startswith("small + prior"):
                continue
            for metric in ("caption", "frechet"):
                out.append(["Video Adapter", "composing a small domain model with a prior beats the small model "
                            "alone", f"{split}: {name} vs small alone", metric, cell(values, metric, 2),
                            cell(small, metric, 2), verdict(values, small, metric)])
        prior = rows.get("prior alone", [])
        for name, values in rows.items():
            if name.startswith("small + prior"):
                out.append(["Video Adapter", "... and keeps the domain's style better than the prior alone",
                            f"{split}: {name} vs prior alone", "frechet", cell(values, "frechet", 2),
                            cell(prior, "frechet", 2), verdict(values, prior, "frechet")])
    rows = oneshot_rows(results)
    tuned = rows.get("tuned, inverted source, edited captions", [])
    for other, metrics in (("untuned, inverted source, edited captions", ("caption", "direction", "track_error")),
                           ("tuned, from noise, edited captions", ("direction", "track_error", "consistency"))):
        for metric in metrics:
            claim = ("one-shot tuning plus inversion keeps the source's motion and follows the edited caption"
                     if other.startswith("untuned") else
                     "starting from the inverted source beats starting from noise (poster: Latents vs Noise)")
            seed = "Tune-A-Video" if other.startswith("untuned") else "poster"
            out.append([seed, claim, f"tuned + inversion vs {other.split(',')[0]}{', from noise' if 'noise' in other else ''}",
                        metric, cell(tuned, metric, 2), cell(rows.get(other, []), metric, 2),
                        verdict(tuned, rows.get(other, []), metric)])
    return out


def _blank_repeats(rows: list[list[str]], columns: int) -> list[list[str]]:
    """Rows with each of the first ``columns`` cells left empty where it repeats the row above (and
    every cell left of it does too): a claim and its pair are named once, above their metrics."""
    out, previous = [], None
    for row in rows:
        shown = list(row)
        for i in range(columns):
            if previous is not None and row[:i + 1] == previous[:i + 1]:
                shown[i] = ""
        out.append(shown)
        previous = row
    return out


def tables(results: list[dict], run: dict) -> str:
    lines = [BEGIN, "", f"_Generated by `make reproduce` (`python -m vidgen.shapes.reproduce`) in "
             f"{run['seconds'] / 60:.0f} minutes on {run['cpu']} ({run['workers']} worker processes, one thread "
             f"each), torch {run['torch']}; every value is the mean over {_seeds(run)}, with the lowest and highest "
             "seed in brackets. Edit the generator, not this block._", "",
             "### Claims", ""]
    lines += _table(["seed", "claim", "pair (A vs B)", "metric", "A", "B", "A compared with B"],
                    _blank_repeats(claims(results), columns=3))
    lines += ["", "### PYoCo: the noise prior of video fine-tuning", "",
              f"{_count(results, 'pyoco')} sampled clips per configuration and seed, one per caption of a balanced "
              "half of the 48 captions; each model samples from the kind of noise it was trained with.", ""]
    lines += _config_table(pyoco_rows(results), PYOCO_COLUMNS)
    for split in ("in-domain", "out-of-domain"):
        lines += ["", f"### Video Adapter: {split} prompts", ""]
        lines += _config_table(adapter_rows(results, split), ADAPTER_COLUMNS)
    lines += ["", "### Tune-A-Video: one-shot tuning and editing", ""]
    lines += _config_table(oneshot_rows(results), ONESHOT_COLUMNS)
    seconds = {r["job"]: r["seconds"] for r in results}
    lines += ["", f"Base models (VAE and prior) took {run['base_seconds'] / 60:.1f} minutes; the jobs "
              f"{sum(seconds.values()) / 60:.1f} worker-minutes.", "", END]
    return "\n".join(lines)


def _seeds(run: dict) -> str:
    count = len(run["settings"]["seeds"])
    return "one training seed" if count == 1 else f"{count} training seeds"


def _count(results: list[dict], experiment: str) -> int:
    from .experiments import eval_captions

    return len(eval_captions()) if _by(results, experiment=experiment) else 0


# ----------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------
def figure(work: str, path: str) -> str | None:
    """Sample frames of every configuration (seed 0's first video, one row each) as a PNG; None
    when the work folder holds no videos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, torch.Tensor]] = []
    jobs = os.path.join(work, "jobs")

    def load(name):
        path_ = os.path.join(jobs, name, "videos.pt")
        return torch.load(path_, weights_only=True) if os.path.isfile(path_) else None

    reference = load("reference")
    if reference:
        rows.append((f"real: {reference['captions'][0]}", reference["real"][0]))
        rows.append(("real through the VAE", reference["real through the VAE"][0]))
    zero = load("pyoco/zero-shot")
    if zero:
        rows.append(("inflated prior, no video training", zero["videos"][0]))
    for arch, arch_name in ARCH_NAMES.items():
        for noise, noise_name in NOISE_NAMES.items():
            found = load(f"pyoco/{arch}-{noise}-0")
            if found:
                rows.append((f"{arch_name}, {noise_name}", found["videos"][0]))
    adapter = load("adapter/0")
    if adapter:
        for key, video in adapter["videos"].items():
            split = key.split(":")[0]
            rows.append((f"{key} ({adapter['captions'][split][0]})", video[0]))
    oneshot = load("oneshot/0")
    if oneshot:
        rows.append((f"one-shot source: {oneshot['source_caption']}", oneshot["videos"]["source"][0]))
        for key, video in oneshot["videos"].items():
            if key != "source":
                caption = oneshot["source_caption"] if "source caption" in key else oneshot["edit_caption"]
                rows.append((f"{key} ({caption})", video[0]))
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 0.95 * len(rows) + 0.3), squeeze=False)
    for ax, (label, video) in zip(axes[:, 0], rows):
        strip = torch.cat([torch.nn.functional.pad(f, (1, 1, 1, 1), value=255) for f in video], dim=2)
        ax.imshow(strip.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(label, fontsize=7, loc="left", pad=2)
        ax.axis("off")
    fig.tight_layout(h_pad=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------
def write(results: list[dict], run: dict, folder: str, work: str) -> dict[str, str]:
    """The results JSON, the figure and RESULTS.md's generated block in ``folder``."""
    os.makedirs(os.path.join(folder, "results"), exist_ok=True)
    results = sorted(results, key=lambda r: r["job"])
    data_path = os.path.join(folder, "results", "moving_shapes.json")
    with open(data_path, "w") as f:
        json.dump({"run": run, "results": results}, f, indent=1, sort_keys=True)
    figure_path = figure(work, os.path.join(folder, "results", "moving_shapes.png"))
    doc = os.path.join(folder, "RESULTS.md")
    text = open(doc).read() if os.path.isfile(doc) else f"# Results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise ValueError(f"{doc}: expected the markers {BEGIN} and {END}")
    head, rest = text.split(BEGIN, 1)
    text = head + tables(results, run) + rest.split(END, 1)[1]
    with open(doc, "w") as f:
        f.write(text)
    written = {"results": data_path, "doc": doc}
    if figure_path:
        written["figure"] = figure_path
    return written


def choose_shipped(results: list[dict]) -> dict:
    """The built-in model: of the video models (either architecture, each noise kind), the kind with
    the best mean caption accuracy over its seeds, its best seed."""
    best = None
    for arch in ARCH_NAMES:
        for noise in NOISE_NAMES:
            runs = _by(results, experiment="pyoco", arch=arch, noise=noise)
            if not runs:
                continue
            mean = sum(r["scores"]["caption"] for r in runs) / len(runs)
            if best is None or mean > best[0]:
                best = (mean, max(runs, key=lambda r: r["scores"]["caption"]))
    if best is None:
        raise ValueError("results: no video model to ship")
    return best[1]


def ship(work: str, results: list[dict], settings: dict, target: str = SHIPPED) -> str:
    """Copy the chosen video model (its video UNet plus the prior's VAE, text encoder, tokenizer and
    scheduler) into the package, with a note of how it was made and how to sample it (the
    experiments' sampler ``settings``)."""
    from ..sampling import saved_unet_class

    chosen = choose_shipped(results)
    prior = os.path.join(work, "prior")
    with atomic_folder(target) as staging:
        for component in ("vae", "text_encoder", "tokenizer", "scheduler"):
            shutil.copytree(os.path.join(prior, component), os.path.join(staging, component))
        shutil.copytree(os.path.join(work, "jobs", chosen["job"], "unet"), os.path.join(staging, "unet"))
        with open(os.path.join(prior, "model_index.json")) as f:
            index = json.load(f)
        unet_class = saved_unet_class(os.path.join(staging, "unet"))
        index["unet"] = ["vidgen" if unet_class == "VideoUNet" else "diffusers", unet_class]
        with open(os.path.join(staging, "model_index.json"), "w") as f:
            json.dump(index, f, indent=2)
        with open(os.path.join(staging, "vidgen_model.json"), "w") as f:
            json.dump({"name": "moving-shapes", "made_by": "make reproduce (docs/RESULTS.md)", "job": chosen["job"],
                       "caption": data.TEMPLATE, "frames": data.FRAMES, "size": data.SIZE,
                       "sampling": {"steps": settings["sample_steps"], "guidance": settings["guidance"],
                                    "noise": chosen["noise"]},
                       "scores": {k: chosen["scores"][k] for k in ("caption", "colour", "shape", "direction",
                                                                  "consistency")}}, f, indent=1)
    return target
