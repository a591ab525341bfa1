"""The normflows-sci command line, end to end on tiny budgets: fit -> info -> score -> sample on
CSV and .npy files, conditional models, the demo, and one-line errors with exit status 2."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from normflows_sci.cli import _default_model_path, main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_table(rows: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=rows)
    mass = np.exp(0.5 * a + 0.3 * rng.normal(size=rows))  # positive
    count = rng.poisson(3.0, size=rows).astype(float)  # integer
    return np.column_stack([a, mass, count])


def write_csv(path, values, names=("a", "mass", "count")) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows([f"{v:.10g}" for v in row] for row in values)


def read_csv(path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], np.array(rows[1:], dtype=float)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def no_temporary_files(folder) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A CSV table and a model fitted to it (2 epochs), shared by the read-only tests."""
    folder = tmp_path_factory.mktemp("fitted")
    data = folder / "table.csv"
    write_csv(data, make_table())
    argv = ["fit", data, "--max-epochs", 2, "--bounds", "mass:0:", "--discrete", "count"]
    argv += ["--seed", 0, "--quiet", "--plots", folder / "plots"]
    code = main([str(a) for a in argv])
    assert code == 0
    return folder, data, folder / "table.nfs"


# -------------------------------------------------------------------------------- round trips


def test_fit_writes_the_model_next_to_the_data_and_plots(fitted):
    folder, _, model = fitted
    assert model.is_file() and model.stat().st_size > 0
    for name in ("training_curves.png", "corner.png", "marginals.png"):
        assert (folder / "plots" / name).read_bytes()[:8] == PNG_SIGNATURE
    assert no_temporary_files(folder)


def test_fit_prints_a_held_out_summary(tmp_path, capsys):
    data = tmp_path / "t.csv"
    write_csv(data, make_table(200, seed=3))
    code, out, err = run(
        capsys, "fit", data, "-o", tmp_path / "m.nfs", "--max-epochs", 1, "--quiet"
    )
    assert code == 0, err
    assert "200 rows x 3 columns (180 for training, 20 held out" in out
    assert "parameters; training stopped by the epoch budget (1 epoch)" in out
    # Under 500 rows the default is an ensemble of three seeds; --ensemble sets the count.
    assert "; the model is an equal-weight ensemble of 3 such flows (seeds 0..2)" in out
    flow, gauss = (float(line.split()[1]) for line in out.splitlines() if line.startswith("    "))
    assert np.isfinite(flow) and np.isfinite(gauss)
    assert "model saved to" in out
    assert (tmp_path / "m.nfs").is_file()


def test_fit_ensemble_option_sets_the_number_of_flows(tmp_path, capsys):
    data = tmp_path / "t.csv"
    write_csv(data, make_table(200, seed=3))
    for count in (1, 2):
        model = tmp_path / f"m{count}.nfs"
        argv = ["fit", data, "-o", model, "--max-epochs", 1, "--quiet", "--ensemble", count]
        code, out, err = run(capsys, *argv, "--seed", 5)
        assert code == 0, err
        assert ("equal-weight ensemble of 2 such flows (seeds 5..6)" in out) == (count == 2)
        assert ("equal-weight ensemble" in out) == (count == 2)
        code, out, _ = run(capsys, "info", model)
        assert json.loads(out)["ensemble_members"] == count
    code, _, err = run(capsys, "fit", data, "--ensemble", 0)
    assert code == 2 and "--ensemble" in err


def test_info_prints_the_model_summary_as_json(fitted, capsys):
    code, out, _ = run(capsys, "info", fitted[2])
    assert code == 0
    info = json.loads(out)
    assert info["columns"] == ["a", "mass", "count"]
    assert info["discrete_columns"] == ["count"]
    assert info["bounds"] == {"mass": [0.0, None]}
    assert info["epochs"] == 2


def test_score_writes_one_log_density_per_row(fitted, tmp_path, capsys):
    _, data, model = fitted
    out_file = tmp_path / "scores.csv"
    code, out, err = run(capsys, "score", model, data, "-o", out_file)
    assert code == 0 and out == ""
    header, scores = read_csv(out_file)
    assert header == ["log_density"]
    assert scores.shape == (300, 1) and np.isfinite(scores).all()
    assert err.startswith("mean log-density: ") and err.rstrip().endswith("nats per row (300 rows)")
    assert float(err.split()[2]) == pytest.approx(scores.mean(), rel=1e-5)
    # Same numbers on stdout; columns matched by name whatever their order in the file.
    _, values = read_csv(data)
    shuffled = tmp_path / "reordered.csv"
    write_csv(shuffled, values[:, [2, 0, 1]], names=("count", "a", "mass"))
    code, out, _ = run(capsys, "score", model, shuffled)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "log_density"
    np.testing.assert_allclose(np.array(lines[1:], dtype=float), scores[:, 0], rtol=1e-6)


def test_sample_writes_csv_npy_and_stdout(fitted, tmp_path, capsys):
    model = fitted[2]
    code, _, _ = run(capsys, "sample", model, "-n", 40, "-o", tmp_path / "s.csv", "--seed", 1)
    assert code == 0
    header, samples = read_csv(tmp_path / "s.csv")
    assert header == ["a", "mass", "count"]
    assert samples.shape == (40, 3)
    np.testing.assert_array_equal(samples[:, 2], np.round(samples[:, 2]))
    assert (samples[:, 1] > 0).all()  # the bound holds
    code, _, _ = run(capsys, "sample", model, "-n", 40, "-o", tmp_path / "s.npy", "--seed", 1)
    assert code == 0
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), samples, rtol=1e-6)
    code, out, _ = run(capsys, "sample", model, "-n", 5, "--seed", 2)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "a,mass,count" and len(lines) == 6
    assert no_temporary_files(tmp_path)


def test_npy_round_trip(tmp_path, capsys):
    values = make_table(150, seed=4)[:, :2]
    np.save(tmp_path / "points.npy", values)
    code, _, err = run(capsys, "fit", tmp_path / "points.npy", "--max-epochs", 1, "--quiet")
    assert code == 0, err
    model = tmp_path / "points.nfs"
    code, out, _ = run(capsys, "info", model)
    assert json.loads(out)["columns"] == ["x0", "x1"]
    code, _, _ = run(capsys, "score", model, tmp_path / "points.npy", "-o", tmp_path / "s.npy")
    assert code == 0
    assert np.load(tmp_path / "s.npy").shape == (150, 1)
    code, _, _ = run(capsys, "sample", model, "-n", 7, "-o", tmp_path / "draws.npy")
    assert code == 0
    assert np.load(tmp_path / "draws.npy").shape == (7, 2)


def test_conditional_model(tmp_path, capsys):
    data = tmp_path / "t.csv"
    write_csv(data, make_table(200, seed=5))
    model = tmp_path / "c.nfs"
    argv = ["fit", data, "-o", model, "--context", "a", "--max-epochs", 1, "--quiet"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "conditional log-likelihood" in out
    context = tmp_path / "context.csv"
    write_csv(context, [[0.5], [-1.0]], names=("a",))
    code, out, err = run(capsys, "sample", model, "--context", context, "-n", 3, "--seed", 0)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "a,mass,count" and len(lines) == 7
    assert [float(line.split(",")[0]) for line in lines[1:]] == [0.5] * 3 + [-1.0] * 3
    code, _, err = run(capsys, "score", model, data)
    assert code == 0 and "mean conditional log-density" in err
    code, _, err = run(capsys, "sample", model, "-n", 3)
    assert code == 2 and "--context FILE" in err


def test_demo_prints_the_comparison_table(tmp_path, capsys):
    argv = ["demo", "--dataset", "penguins", "--max-epochs", 2, "--quiet", "--plots", tmp_path]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "train 274 rows, test 68 rows (random split, seed 0)" in out
    rows = {}
    for line in out.splitlines():
        for name in ("normalizing flow", "Gaussian (full", "Gaussian mixture"):
            if line.startswith(name):
                rows[name] = [float(v) for v in line.split()[-3:]]
    assert set(rows) == {"normalizing flow", "Gaussian (full", "Gaussian mixture"}
    assert all(np.isfinite(v).all() for v in rows.values())
    # The mixture cannot do worse than its one-component member on these well-separated species.
    assert rows["Gaussian mixture"][0] > rows["Gaussian (full"][0] - 0.5
    assert (tmp_path / "corner.png").read_bytes()[:8] == PNG_SIGNATURE


# ---------------------------------------------------------------------------------------- errors


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("normflows-sci: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_and_unreadable_files(fitted, tmp_path, capsys):
    model = fitted[2]
    code, _, err = run(capsys, "fit", tmp_path / "nope.csv")
    assert_one_line_error(code, err, "DATA file not found", "nope.csv")
    code, _, err = run(capsys, "score", tmp_path / "nope.nfs", fitted[1])
    assert_one_line_error(code, err, "MODEL file not found")
    code, _, err = run(capsys, "info", fitted[1])  # a CSV is not a model
    assert_one_line_error(code, err, "not a readable normflows_sci model file")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    code, _, err = run(capsys, "score", model, tmp_path / "junk.npy")
    assert_one_line_error(code, err, "not a .npy file")
    (tmp_path / "empty.csv").write_text("")
    code, _, err = run(capsys, "fit", tmp_path / "empty.csv")
    assert_one_line_error(code, err, "is empty")


def test_bad_data(fitted, tmp_path, capsys):
    model = fitted[2]
    cases = {
        "nan.csv": (
            "a,mass,count\n1,2,3\nnan,1,2\n",
            "column 'a' has missing values (NaN) in 1 row",
        ),
        "empty_cell.csv": ("a,mass,count\n1,2,3\n1,,2\n", "line 3, column 'mass': missing value"),
        "text.csv": ("a,mass,count\n1,abc,3\n", "line 2, column 'mass': 'abc' is not a number"),
        "ragged.csv": ("a,mass,count\n1,2,3\n1,2\n", "line 3: 2 fields, but the header has 3"),
        "inf.csv": ("a,mass,count\n1,inf,3\n", "column 'mass' has infinite values"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        code, _, err = run(capsys, "score", model, tmp_path / name)
        assert_one_line_error(code, err, message)
    np.save(tmp_path / "two.npy", np.zeros((5, 2)))
    code, _, err = run(capsys, "score", model, tmp_path / "two.npy")
    assert_one_line_error(code, err, "has 2 columns, but the model expects 3 (a, mass, count)")
    (tmp_path / "other.csv").write_text("a,b,c\n1,2,3\n")
    code, _, err = run(capsys, "score", model, tmp_path / "other.csv")
    assert_one_line_error(code, err, "lacks the model's columns ['mass', 'count']")
    (tmp_path / "frac.csv").write_text("a,mass,count\n1,2,3.5\n")
    code, _, err = run(capsys, "score", model, tmp_path / "frac.csv")
    assert_one_line_error(code, err, "integer")


def test_bad_options(fitted, capsys):
    data = fitted[1]
    cases = [
        (["--bounds", "mass:1"], "--bounds expects COL:LOW:HIGH"),
        (["--bounds", "nope:0:"], "--bounds: no column 'nope'; the columns are a, mass, count"),
        (["--bounds", "mass:x:"], "--bounds: 'x' is not a number"),
        (["--bounds", "mass:2:1"], "LOW must be below HIGH"),
        (["--discrete", "a"], "discrete column 'a' has non-integer values"),
        (["--bounds", "a:0:"], "column 'a' has values below its lower bound"),
    ]
    for extra, message in cases:
        code, _, err = run(capsys, "fit", data, "--max-epochs", 1, "--quiet", *extra)
        assert_one_line_error(code, err, message)
    code, _, err = run(capsys, "sample", fitted[2])
    assert_one_line_error(code, err, "-n N")
    code, _, err = run(capsys, "sample", fitted[2], "-n", 2, "--context", data)
    assert_one_line_error(code, err, "the model is not conditional")
    # Usage errors come from argparse: status 2 and its usage message.
    code, _, err = run(capsys, "fit", data, "--flow", "glow")
    assert code == 2 and "invalid choice: 'glow'" in err
    code, _, err = run(capsys, "sample", fitted[2], "-n", 0)
    assert code == 2 and "must be a positive integer" in err
    code, _, err = run(capsys)
    assert code == 2 and "usage:" in err


def test_parquet_without_pyarrow_names_pyarrow(tmp_path, capsys):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "t.parquet").write_bytes(b"PAR1")
        code, _, err = run(capsys, "fit", tmp_path / "t.parquet")
        assert_one_line_error(code, err, "needs pyarrow", "pip install pyarrow")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        values = make_table(60)
        table = pa.table({"a": values[:, 0], "mass": values[:, 1], "count": values[:, 2]})
        pq.write_table(table, tmp_path / "t.parquet")
        code, _, err = run(capsys, "fit", tmp_path / "t.parquet", "--max-epochs", 1, "--quiet")
        assert code == 0, err


# ------------------------------------------------------------------------------------- outputs


def test_failed_command_leaves_the_previous_output_untouched(fitted, tmp_path, capsys):
    out_file = tmp_path / "scores.csv"
    out_file.write_text("previous\n")
    (tmp_path / "bad.csv").write_text("a,mass,count\n1,nan,3\n")
    code, _, _ = run(capsys, "score", fitted[2], tmp_path / "bad.csv", "-o", out_file)
    assert code == 2
    assert out_file.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "scores.csv"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_outputs_to_a_pipe_are_written_through_not_replaced(fitted, tmp_path, capsys):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_bytes()))
    reader.start()
    code, _, err = run(capsys, "sample", fitted[2], "-n", 3, "-o", pipe, "--seed", 0)
    reader.join(timeout=30)
    assert code == 0, err
    assert received and received[0].startswith(b"a,mass,count\n")
    assert not pipe.is_file()  # still a pipe
    code, _, err = run(capsys, "fit", fitted[1], "-o", pipe, "--max-epochs", 1)
    assert_one_line_error(code, err, "is not a regular file")


def test_gzip_csv_and_default_model_names(tmp_path, capsys):
    data = tmp_path / "t.csv.gz"
    with gzip.open(data, "wt") as handle:
        handle.write("a,b\n" + "\n".join(f"{i % 7},{i % 5}.5" for i in range(60)) + "\n")
    assert _default_model_path(data) == tmp_path / "t.nfs"
    assert _default_model_path(tmp_path / "x.npy") == tmp_path / "x.nfs"
    code, _, err = run(capsys, "fit", data, "--max-epochs", 1, "--quiet")
    assert code == 0, err
    assert (tmp_path / "t.nfs").is_file()


def test_headerless_csv_gets_default_names(tmp_path, capsys):
    (tmp_path / "raw.csv").write_text("\n".join(f"{i},{(i * 7) % 11}" for i in range(40)) + "\n")
    code, _, err = run(capsys, "fit", tmp_path / "raw.csv", "--max-epochs", 1, "--quiet")
    assert code == 0, err
    assert "no header row" in err
    code, out, _ = run(capsys, "info", tmp_path / "raw.nfs")
    assert json.loads(out)["columns"] == ["x0", "x1"]


def test_version_and_python_dash_m(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("normflows-sci ")
    result = subprocess.run(
        [sys.executable, "-m", "normflows_sci", "info", "missing.nfs"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "normflows-sci: error: MODEL file not found: missing.nfs"


def test_demo_defaults():
    """An epoch budget, not a wall-clock one (issue 21: 3 or 5 epochs for the same seed)."""
    from normflows_sci.cli import DEMO_MAX_EPOCHS, build_parser
    from normflows_sci.datasets import DEFAULT_DATASET

    args = build_parser().parse_args(["demo"])
    assert args.dataset == DEFAULT_DATASET
    assert args.max_epochs == DEMO_MAX_EPOCHS and args.max_time is None and args.seed == 0
    assert args.threads == 1


# ------------------------------------------------------------- fair, reproducible demo (issue 21)


def _demo_numbers(out: str) -> list[str]:
    """The printed scores of the demo table (fit times left out: they are not reproducible)."""
    rows = [line for line in out.splitlines() if line.startswith(("normalizing", "Gaussian"))]
    return [" ".join(line.split()[:-1]) for line in rows]


def test_demo_with_the_same_seed_gives_the_same_numbers_and_says_why_training_stopped(capsys):
    import torch

    threads = torch.get_num_threads()
    argv = ["demo", "--dataset", "penguins", "--max-epochs", 2, "--quiet", "--seed", 3]
    torch.set_num_threads(2)
    try:
        first, second = run(capsys, *argv), run(capsys, *argv)
        assert torch.get_num_threads() == 2  # the demo's one thread does not leak
    finally:
        torch.set_num_threads(threads)
    assert first[0] == second[0] == 0, first[2]
    assert len(_demo_numbers(first[1])) == 3
    assert _demo_numbers(first[1]) == _demo_numbers(second[1])
    assert "flow training stopped by the epoch budget (2 epochs)" in first[1]
    # The body masses are recorded in 25 g steps: every model scores them per 25 g cell.
    assert "every model scores integer columns as log-probabilities of the cells " in first[1]
    assert "body_mass_g [v, v+25)" in first[1]


def test_demo_scores_the_baselines_on_the_lattice_the_flow_detected():
    """A column in steps of 5: the flow scores cells [v, v+5), so must the baselines. Scored on
    unit cells (the old demo), the Gaussian lost log 5 nats per row to the flow for nothing."""
    from normflows_sci import DensityEstimator
    from normflows_sci.baselines import baseline_scores
    from normflows_sci.cli import _demo_comparison

    rng = np.random.default_rng(0)
    table = np.column_stack([rng.normal(size=1200), 5.0 * rng.poisson(30.0, size=1200)])
    names = ["x", "wind"]
    train, test = table[:1000], table[1000:]
    est = DensityEstimator(discrete=["wind"], max_epochs=1, verbose=False, random_state=0)
    est.fit(train, columns=names)
    assert est.spec_.step == (0.0, 5.0)
    rows, cells = _demo_comparison(est, train, test, names, seed=0)
    assert cells == "integer columns as log-probabilities of the cells wind [v, v+5)"
    assert rows[0][1] == est.score(test)
    naive = baseline_scores(train, test, discrete=[1], random_state=0)
    assert rows[1][1] - naive[0][1] == pytest.approx(np.log(5.0), abs=0.01)


# ------------------------------------------------------------- one place per concept (issue 19)


def test_table_reading_lives_in_io_and_the_cli_name_is_a_deprecated_alias(tmp_path):
    from normflows_sci import cli
    from normflows_sci import io as nio

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,x\n")
    with pytest.raises(nio.TableFileError, match=r"bad\.csv, line 3, column 'b': 'x' is not"):
        nio.read_table(bad)
    assert issubclass(nio.TableFileError, ValueError)
    with pytest.warns(DeprecationWarning, match=r"use normflows_sci\.io\.read_table"):
        with pytest.raises(cli.CLIError, match="line 3"):  # the exception callers caught before
            cli.read_table(bad)
    good = tmp_path / "good.csv"
    good.write_text("a,b\n1,2\n")
    with pytest.warns(DeprecationWarning):
        values, names = cli.read_table(good)
    assert names == ["a", "b"] and values.tolist() == [[1.0, 2.0]]


def test_namespaces_do_not_advertise_the_deprecated_alias_or_the_format_router():
    """``cli.__all__`` listed the deprecated ``read_table`` next to ``main`` and ``io.__all__`` the
    CLI's suffix router ``table_format``: ``from ... import *`` and the API page offered them as
    API. Both stay importable for code that used them."""
    from normflows_sci import cli
    from normflows_sci import io as nio

    assert "read_table" not in cli.__all__ and "read_table" in nio.__all__
    assert "table_format" not in nio.__all__
    assert nio.table_format("a.CSV.gz") == (".csv", True) and callable(cli.read_table)


def test_flow_choices_come_from_the_estimator_registry(monkeypatch):
    from normflows_sci import estimator
    from normflows_sci.cli import build_parser
    from normflows_sci.flows import NSF

    monkeypatch.setitem(estimator.FLOWS, "nsf_copy", NSF)
    args = build_parser().parse_args(["fit", "data.csv", "--flow", "nsf_copy"])
    assert args.flow == "nsf_copy"
    assert estimator.DensityEstimator(flow="nsf_copy").flow == "nsf_copy"


def test_version_has_one_leaf_source_read_by_setup_and_model_files():
    import ast
    from pathlib import Path

    import normflows_sci
    from normflows_sci import _version
    from normflows_sci import io as nio

    assert normflows_sci.__version__ is _version.__version__
    root = Path(normflows_sci.__file__).parent
    setup = (root.parent / "setup.cfg").read_text()
    assert "version = attr: normflows_sci._version.__version__" in setup
    assert not [
        n
        for n in ast.walk(ast.parse(Path(_version.__file__).read_text()))
        if isinstance(n, (ast.Import, ast.ImportFrom))
    ]
    # io records the version in model files without importing the package root (a cycle).
    upward = [
        node.lineno
        for node in ast.walk(ast.parse(Path(nio.__file__).read_text()))
        if isinstance(node, ast.ImportFrom) and node.module == "normflows_sci"
    ]
    assert upward == []


def test_fit_bounds_a_positive_column_by_default_and_its_samples_stay_positive(tmp_path, capsys):
    """Without --bounds a log-normal flux used to be unbounded: 31 of 5000 samples came out
    negative. The default is now 'auto' (--bounds none turns it off)."""
    data = tmp_path / "flux.csv"
    flux = np.random.default_rng(4).lognormal(0.0, 1.0, size=(2000, 1))
    write_csv(data, flux, names=("flux",))
    code, _, err = run(capsys, "fit", data, "--max-epochs", 2, "--quiet")
    assert code == 0, err
    model = tmp_path / "flux.nfs"
    code, out, _ = run(capsys, "info", model)
    assert json.loads(out)["bounds"] == {"flux": [0.0, None]}
    code, _, err = run(capsys, "sample", model, "-n", 20000, "--seed", 1, "-o", tmp_path / "s.npy")
    assert code == 0, err
    assert np.load(tmp_path / "s.npy").min() >= 0.0
    code, _, err = run(capsys, "fit", data, "--max-epochs", 1, "--quiet", "--bounds", "none")
    assert code == 0, err
    assert json.loads(run(capsys, "info", model)[1])["bounds"] == {}


def test_stop_reason_names_patience_and_a_time_budget_as_not_reproducible():
    from types import SimpleNamespace

    from normflows_sci.cli import _stop_reason

    history = {"epoch": [1, 2, 3, 4, 5], "val_loss": [3.0, 2.0, 2.5, 2.4, 2.2]}
    early = SimpleNamespace(history_=history, max_epochs=50, patience=3, max_time=None)
    assert _stop_reason(early) == "early stopping (no validation improvement for 3 epochs)"
    timed = SimpleNamespace(history_=history, max_epochs=None, patience=20, max_time=60.0)
    assert _stop_reason(timed).startswith("the time budget (60 s, after 5 epochs; the number")


# ------------------------------------------------------------ mixed categorical tables (issue 21)


def write_rows(path, header, rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def read_rows(path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


MIXED_HEADER = ("species", "site", "code", "mass")


def mixed_rows(rows: int = 48, seed: int = 0) -> list[list]:
    """Labels next to numbers: text species, a text site whose level "7" looks like a number,
    a numeric code declared categorical, and a mass that depends on the species."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(rows):
        species = ("Adelie", "Gentoo")[i % 2]
        mass = (3.5 if species == "Adelie" else 5.0) + 0.3 * rng.normal()
        out.append([species, ("A", "7")[(i // 2) % 2], i % 3 % 2, f"{mass:.6g}"])
    return out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A small mixed CSV and a model fitted to it (1 epoch) with `--categorical code,species`."""
    folder = tmp_path_factory.mktemp("mixed")
    data = folder / "mixed.csv"
    write_rows(data, MIXED_HEADER, mixed_rows())
    argv = ["fit", data, "--categorical", "code,species", "--max-epochs", 1, "--quiet"]
    code = main([str(a) for a in argv])
    assert code == 0
    return folder, data, folder / "mixed.nfs"


def test_mixed_fit_info_lists_the_categorical_columns_and_level_counts(mixed, tmp_path, capsys):
    _, data, model = mixed
    code, out, err = run(capsys, "info", model)
    assert code == 0, err
    info = json.loads(out)
    assert info["categorical_columns"] == {"species": 2, "site": 2, "code": 2}
    levels = info["categorical_levels"]
    assert set(levels["species"]) == {"Adelie", "Gentoo"} and set(levels["site"]) == {"A", "7"}
    assert set(levels["code"]) == {"0.0", "1.0"}  # numbers declared categorical stay numbers
    training_rows = 48 - round(0.1 * 48)
    assert all(sum(counts.values()) == training_rows for counts in levels.values())
    code, out, err = run(
        capsys, "fit", data, "-o", tmp_path / "m.nfs", "--max-epochs", 1, "--quiet"
    )
    assert code == 0, err
    assert "categorical columns: species (2 levels), site (2 levels)" in out
    flow_line = next(line for line in out.splitlines() if line.startswith("    flow"))
    mean, stderr = float(flow_line.split()[1]), float(flow_line.split()[3])
    assert np.isfinite(mean) and stderr > 0


def test_mixed_score_gives_minus_inf_for_an_unseen_level_and_counts_it(mixed, tmp_path, capsys):
    _, _, model = mixed
    rows = mixed_rows(10, seed=1)
    rows[2][0] = "Chinstrap"  # a species the model never saw
    scored = tmp_path / "new.csv"
    write_rows(scored, MIXED_HEADER, rows)
    code, out, err = run(capsys, "score", model, scored, "-o", tmp_path / "s.csv")
    assert code == 0 and out == "", err
    _, values = read_csv(tmp_path / "s.csv")
    assert np.isneginf(values[2, 0]) and np.isfinite(np.delete(values[:, 0], 2)).all()
    mean_line, count_line = err.strip().splitlines()
    assert mean_line.startswith("mean log-density: ")
    assert mean_line.endswith("nats per row (9 rows inside the support)")
    assert float(mean_line.split()[2]) == pytest.approx(np.delete(values[:, 0], 2).mean(), 1e-5)
    assert float(mean_line.split()[4]) > 0  # its standard error
    assert count_line.startswith("1 of 10 rows lie outside the model's support and score -inf")
    assert "data row 3: column 'species' holds the level 'Chinstrap'" in count_line
    code, _, err = run(capsys, "score", model, scored, "--strict", "-o", tmp_path / "t.csv")
    assert_one_line_error(code, err, "new.csv, data row 3", "column 'species'", "'Chinstrap'")
    assert not (tmp_path / "t.csv").exists()


def test_mixed_score_matches_text_levels_that_look_like_numbers(mixed, tmp_path, capsys):
    """The site level "7" is text in training (the column also holds "A"); a file whose sites are
    all "7" would be read as numbers and every row scored -inf as an unseen level."""
    _, _, model = mixed
    rows = [row for row in mixed_rows(12, seed=2) if row[1] == "7"]
    scored = tmp_path / "sevens.csv"
    write_rows(scored, MIXED_HEADER, rows)
    code, out, err = run(capsys, "score", model, scored)
    assert code == 0, err
    assert np.isfinite(np.array(out.splitlines()[1:], dtype=float)).all()
    assert "outside the model's support" not in err


def test_mixed_sample_writes_training_levels_and_scores_finite(mixed, tmp_path, capsys):
    _, _, model = mixed
    out_file = tmp_path / "draws.csv"
    code, _, err = run(capsys, "sample", model, "-n", 60, "--seed", 3, "-o", out_file)
    assert code == 0, err
    header, rows = read_rows(out_file)
    assert header == list(MIXED_HEADER) and len(rows) == 60
    assert {r[0] for r in rows} == {"Adelie", "Gentoo"} and {r[1] for r in rows} == {"A", "7"}
    assert {float(r[2]) for r in rows} <= {0.0, 1.0}
    code, out, err = run(capsys, "score", model, out_file)
    assert code == 0, err
    assert np.isfinite(np.array(out.splitlines()[1:], dtype=float)).all()
    code, _, err = run(capsys, "sample", model, "-n", 5, "-o", tmp_path / "draws.npy")
    assert_one_line_error(code, err, "text columns cannot be written as .npy")


def test_mixed_csv_with_missing_values_gives_one_clear_line(tmp_path, capsys):
    cases = {
        "empty_label.csv": (2, 0, "", "line 4, column 'species': missing value (empty field)"),
        "empty_number.csv": (1, 3, "", "line 3, column 'mass': missing value (empty field)"),
        "na_number.csv": (5, 3, "NA", "line 7, column 'mass': missing value 'NA'"),
    }
    for name, (row, column, cell, message) in cases.items():
        rows = mixed_rows(20)
        rows[row][column] = cell
        write_rows(tmp_path / name, MIXED_HEADER, rows)
        code, _, err = run(capsys, "fit", tmp_path / name, "--max-epochs", 1, "--quiet")
        assert_one_line_error(code, err, name, message)


def test_fit_moves_held_out_rows_with_a_level_absent_from_training(tmp_path, capsys):
    """A level seen in only one row that the split holds out used to make the fit refuse its own
    validation rows (levels not in X)."""
    from normflows_sci.estimator import validation_split

    rows = mixed_rows(40)
    _, held = validation_split(40, 0.1, 0)
    rows[int(held[0])][1] = "B"  # the only row of site B is held out
    write_rows(tmp_path / "rare.csv", MIXED_HEADER, rows)
    code, out, err = run(capsys, "fit", tmp_path / "rare.csv", "--max-epochs", 1, "--quiet")
    assert code == 0, err
    assert "(37 for training, 3 held out" in out
    assert "1 held-out row with a level not among the training rows moved to training" in out
    info = json.loads(run(capsys, "info", tmp_path / "rare.nfs")[1])
    assert info["categorical_levels"]["site"]["B"] == 1


def test_text_tables_round_trip_through_write_and_read(tmp_path):
    from normflows_sci import io as nio

    table = np.empty((3, 3), dtype=object)
    table[:, 0] = ["Adelie", "Gentoo, south", 'say "hi"']
    table[:, 1] = [1.5, -2e-7, 3.0]
    table[:, 2] = ["7", "A", "7"]
    path = nio.write_table(table, ["species", "mass", "site"], tmp_path / "t.csv")
    values, names = nio.read_table(path, text=["species", "site"])
    assert names == ["species", "mass", "site"]
    assert values.dtype == object and values.tolist() == table.tolist()
    auto, _ = nio.read_table(path, text="auto")
    assert (
        auto[:, :2].tolist() == table[:, :2].tolist()
        and auto[:, 2].tolist() == table[:, 2].tolist()
    )
    with pytest.raises(
        nio.TableFileError, match=r"line 2, column 'species': 'Adelie' is not a number"
    ):
        nio.read_table(path)  # numeric only unless text is asked for


def test_penguins_mixed_end_to_end(tmp_path, capsys):
    from normflows_sci.datasets import load_dataset

    frame = load_dataset("penguins", categorical=True).data
    data = tmp_path / "penguins.csv"
    frame.to_csv(data, index=False)
    code, out, err = run(capsys, "fit", data, "--max-epochs", 1, "--quiet")
    assert code == 0, err
    assert "species (3 levels), island (3 levels), sex (2 levels)" in out
    model = tmp_path / "penguins.nfs"
    code, out, err = run(capsys, "score", model, data)
    assert code == 0, err
    assert np.isfinite(np.array(out.splitlines()[1:], dtype=float)).all()
    assert err.rstrip().endswith(f"nats per row ({len(frame)} rows)")
    code, out, err = run(capsys, "sample", model, "-n", 50, "--seed", 0)
    assert code == 0, err
    drawn = list(csv.reader(out.splitlines()))
    assert drawn[0] == list(frame.columns)
    for j, column in enumerate(("species", "island", "sex")):
        assert {row[j] for row in drawn[1:]} <= set(frame[column].cat.categories)


def test_mixed_conditional_model_samples_at_text_contexts(mixed, tmp_path, capsys):
    """A text context column: its rows are read as labels, and a level the model never saw is
    one line naming the context file's data row (the estimator counts rows from 0)."""
    _, data, _ = mixed
    model = tmp_path / "conditional.nfs"
    argv = ["fit", data, "-o", model, "--context", "species", "--max-epochs", 1, "--quiet"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "held-out mean conditional log-likelihood" in out
    write_rows(tmp_path / "context.csv", ["species"], [["Gentoo"], ["Adelie"]])
    code, out, err = run(capsys, "sample", model, "--context", tmp_path / "context.csv", "-n", 2)
    assert code == 0, err
    drawn = list(csv.reader(out.splitlines()))
    assert drawn[0] == list(MIXED_HEADER)
    assert [row[0] for row in drawn[1:]] == ["Gentoo", "Gentoo", "Adelie", "Adelie"]
    assert {row[1] for row in drawn[1:]} <= {"A", "7"}
    write_rows(tmp_path / "dodo.csv", ["species"], [["Adelie"], ["Dodo"]])
    code, _, err = run(capsys, "sample", model, "--context", tmp_path / "dodo.csv", "-n", 3)
    assert_one_line_error(code, err, "dodo.csv, data row 2: column 'species'", "'Dodo'")


@pytest.mark.filterwarnings("ignore:context columns .* are constant")  # each id's dummy
def test_fit_warns_about_a_text_column_of_identifiers(tmp_path, capsys):
    """A column of row ids (or dates) is text, so it became a categorical column in silence:
    every new id scores -inf. The fit says so, naming the column."""
    rows = [[f"penguin-{i}", *row[:1], row[3]] for i, row in enumerate(mixed_rows(30))]
    write_rows(tmp_path / "ids.csv", ["name", "species", "mass"], rows)
    code, _, err = run(capsys, "fit", tmp_path / "ids.csv", "--max-epochs", 1, "--quiet")
    assert code == 0, err
    (warning,) = [line for line in err.splitlines() if "warning" in line]
    assert "categorical column 'name' has 30 levels in 30 rows" in warning
    assert "'species'" not in err


def test_categorical_option_splits_on_commas_but_keeps_a_name_with_one(tmp_path, capsys):
    write_rows(tmp_path / "t.csv", ["a,b", "x"], [[i % 2, 0.5 * i] for i in range(8)])
    argv = ["fit", tmp_path / "t.csv", "--max-epochs", 1, "--quiet", "--categorical"]
    code, out, err = run(capsys, *argv, "a,b")
    assert code == 0, err
    assert "categorical columns: a,b (2 levels)" in out
    code, _, err = run(capsys, *argv, "x,nope")
    assert_one_line_error(code, err, "--categorical: no column 'nope'")


def test_fit_models_few_valued_columns_as_levels_and_scores_the_gaussian_on_their_cells(
    tmp_path, capsys
):
    """As ``DensityEstimator(categorical="auto")``: a numeric column of four non-integer values
    is modelled as levels, and the held-out Gaussian is scored on the same level cells (before,
    the CLI modelled it as a density and compared it with the Gaussian's density there)."""
    values = make_table(200, seed=4)
    values[:, 0] = np.array([0.0, 3.26, 3.93, 4.56])[np.arange(200) % 4]
    data = tmp_path / "t.csv"
    write_csv(data, values, names=("rate", "mass", "count"))
    argv = ["fit", data, "-o", tmp_path / "m.nfs", "--max-epochs", 1, "--quiet"]
    code, out, err = run(capsys, *argv, "--discrete", "count")
    assert code == 0, err
    assert "categorical columns: rate (4 levels)" in out
    assert "level cells rate (4)" in out
    code, out, err = run(capsys, *argv, "--discrete", "count", "--bounds", "rate:-1:5")
    assert code == 0, err
    assert "categorical columns" not in out  # a column given a numeric role stays numeric


def test_fit_and_demo_hold_out_blocks_of_serial_rows(tmp_path, capsys):
    """Rows that are near-copies of their neighbours (a storm's six-hourly fixes) are held out in
    blocks: single held-out rows would have their copies in training, and the held-out score
    and early stopping would reward memorising."""
    rng = np.random.default_rng(0)
    tracks = np.cumsum(rng.normal(scale=0.05, size=(20, 30, 2)), axis=1)
    tracks += rng.normal(scale=3.0, size=(20, 1, 2))
    data = tmp_path / "tracks.csv"
    write_csv(data, tracks.reshape(-1, 2), names=("lat", "long"))
    code, out, err = run(
        capsys, "fit", data, "-o", tmp_path / "m.nfs", "--max-epochs", 1, "--quiet"
    )
    assert code == 0, err
    assert "60 held out for validation and early stopping, in blocks of 3 consecutive rows" in out
    write_csv(data, make_table(600, seed=5))
    code, out, err = run(
        capsys, "fit", data, "-o", tmp_path / "m.nfs", "--max-epochs", 1, "--quiet"
    )
    assert code == 0, err
    assert "60 held out for validation and early stopping)" in out
