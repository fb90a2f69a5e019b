"""docs/RESULTS.md's generator: means with seed ranges, verdicts only when every seed agrees, the
generated block replaced between its markers and the prose around it kept."""
import pytest

from vidgen.shapes import report


def seeds(key, *values):
    return [{key: v} for v in values]


def test_a_cell_is_the_mean_with_the_seed_range():
    assert report.cell(seeds("caption", 0.5, 0.75, 1.0), "caption") == "0.75 (0.50-1.00)"
    assert report.cell(seeds("caption", 0.5), "caption") == "0.50"
    assert report.cell(seeds("caption", float("nan")), "caption") == "-"


@pytest.mark.parametrize("a,b,key,expected", [
    ((0.8, 0.9), (0.5, 0.7), "caption", "better, every seed"),
    ((0.5, 0.9), (0.6, 0.7), "caption", "no clear difference"),
    ((0.2, 0.3), (0.5, 0.7), "caption", "worse, every seed"),
    ((10.0, 20.0), (30.0, 40.0), "frechet", "better, every seed"),   # lower is better
    ((1.0, 2.0), (0.2, 0.5), "jitter", "worse, every seed"),
])
def test_a_verdict_needs_every_seed_of_one_side_beyond_every_seed_of_the_other(a, b, key, expected):
    assert report.verdict(seeds(key, *a), seeds(key, *b), key) == expected


def _pyoco(arch, noise, seed, caption):
    return {"experiment": "pyoco", "arch": arch, "noise": noise, "seed": seed, "job": f"pyoco/{arch}-{noise}-{seed}",
            "seconds": 1.0, "scores": {"caption": caption, "consistency": 0.5, "frechet": 10.0}}


def test_the_generated_block_replaces_the_old_one_and_keeps_the_prose(tmp_path):
    results = [_pyoco("inflated", noise, seed, {"iid": 0.2, "mixed": 0.3, "progressive": 0.6}[noise] + seed / 50)
               for noise in ("iid", "mixed", "progressive") for seed in (0, 1)]
    run = {"seconds": 60.0, "base_seconds": 30.0, "cpu": "a CPU", "workers": 2, "torch": "2.x",
           "settings": {"seeds": [0, 1]}}
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"# Results\n\nbefore\n\n{report.BEGIN}\nold table\n{report.END}\n\nafter\n")
    paths = report.write(results, run, str(tmp_path), work=str(tmp_path / "no_jobs"))
    assert set(paths) == {"results", "doc"}  # no videos in the work folder: no figure
    written = doc.read_text()
    assert written.startswith("# Results\n\nbefore\n") and written.endswith("\nafter\n")
    assert "old table" not in written and "2 training seeds" in written
    assert "| Tune-A-Video inflation, progressive noise | 0.61 (0.60-0.62) |" in written
    row = next(line for line in written.splitlines() if "progressive vs i.i.d. | caption" in line)
    assert row.startswith("|  |  | Tune-A-Video inflation: progressive vs i.i.d. |")  # claim named once, above
    assert row.endswith("| 0.61 (0.60-0.62) | 0.21 (0.20-0.22) | better, every seed |")
    assert report.choose_shipped(results)["job"] == "pyoco/inflated-progressive-1"


def test_tables_keep_their_configuration_order_for_results_read_back_from_json():
    """Results read back from JSON (keys sorted, as a resumed run reads its finished jobs) keep the
    tables' order: the small model, the compositions, the prior; the one-shot configurations as run."""
    from vidgen.shapes.experiments import ONESHOT_CONFIGS

    names = ["small model alone", "small + prior, lambda 0.1", "small + prior, lambda 0.5", "prior alone"]
    adapter = {"experiment": "adapter", "scores": {"in-domain": {n: {"caption": 0.0} for n in sorted(names)}}}
    assert list(report.adapter_rows([adapter], "in-domain")) == names
    oneshot = {"experiment": "oneshot", "scores": {n: {"caption": 0.0} for n in sorted(ONESHOT_CONFIGS)}}
    assert list(report.oneshot_rows([oneshot])) == list(ONESHOT_CONFIGS)


def test_the_shipped_model_is_the_best_video_model_of_either_architecture():
    results = [_pyoco(arch, noise, seed, base + seed / 50)
               for arch, base in (("inflated", 0.3), ("motion_adapter", 0.5)) for noise in ("iid", "mixed")
               for seed in (0, 1)]
    results.append(_pyoco("inflated", "progressive", 2, 0.9))  # the best seed, of a kind with a worse mean
    results.append(_pyoco("inflated", "progressive", 3, 0.0))
    assert report.choose_shipped(results)["job"] == "pyoco/motion_adapter-iid-1"

