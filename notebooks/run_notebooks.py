"""Regenerate the outputs of the tutorial notebooks stored in this folder.

Each notebook is kept as a pair: ``<name>.py`` (jupytext percent format, the source to
edit and review) and ``<name>.ipynb`` (the same cells with the outputs of a real run, for
reading on GitHub). Jupyter with jupytext installed keeps the two in sync when a notebook
is edited there. This script:

1. syncs every ``<name>.py`` into ``<name>.ipynb`` (cell ids and metadata of the existing
   ``.ipynb`` are kept, so unchanged cells produce no diff);
2. executes the notebooks in order in a fresh kernel of this interpreter, with the
   tutorial settings of ``_settings.py`` (``MRCNN_NB_FAST`` is switched off):
   ``train_shapes`` first, then ``demo``, ``inspect_data``, ``inspect_model`` and
   ``inspect_weights``, which get the last checkpoint of ``train_shapes`` through
   ``MRCNN_NB_WEIGHTS``;
3. writes each executed notebook, outputs included, into its ``.ipynb``.

Usage (from the repository root)::

    python notebooks/run_notebooks.py                     # sync, run all, write outputs
    python notebooks/run_notebooks.py --sync-only         # only .py -> .ipynb, keep outputs
    python notebooks/run_notebooks.py demo inspect_model --weights logs/shapes.../x.h5

A notebook that raises stops the run; its ``.ipynb`` is then left as it was. Logs and
checkpoints go to ``MRCNN_NB_LOGS`` (default ``<repo>/logs``). tests/test_notebooks.py
uses :func:`read_source` and :func:`execute` of this module to run the notebooks in fast
mode without writing anything.
"""

import argparse
import base64
import contextlib
import io
import os
import re
import sys
import time

import jupytext
from jupytext.combine import combine_inputs_with_outputs
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))

# Execution order: train_shapes writes the checkpoint the others load.
NOTEBOOKS = ("train_shapes", "demo", "inspect_data", "inspect_model", "inspect_weights")
USES_CHECKPOINT = ("demo", "inspect_model", "inspect_weights")
SOURCE_FORMAT = "py:percent"


def source_path(name):
    return os.path.join(HERE, name + ".py")


def notebook_path(name):
    return os.path.join(HERE, name + ".ipynb")


def read_source(name):
    """The notebook as written in its paired ``.py`` source (no outputs)."""
    return jupytext.read(source_path(name), fmt=SOURCE_FORMAT)


def read_synced(name):
    """Cells of ``<name>.py`` merged with the outputs, ids and metadata of ``<name>.ipynb``.

    Outputs are kept only for cells whose source did not change (jupytext's rule).
    """
    nb = read_source(name)
    if os.path.exists(notebook_path(name)):
        nb = combine_inputs_with_outputs(nb, jupytext.read(notebook_path(name)))
    return nb


def write_notebook(nb, path):
    """Write ``nb`` as .ipynb; return True if the file changed."""
    text = jupytext.writes(nb, fmt="ipynb")
    if not text.endswith("\n"):
        text += "\n"   # as nbformat.write (and Jupyter) end the file
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return True


class ThisInterpreterKernels(KernelSpecManager):
    """Resolves every kernel name to ipykernel on sys.executable.

    The notebooks ask for "python3"; an installed kernelspec of that name may point to
    another Python (without TensorFlow), and a fresh machine may have none. This needs
    only ipykernel importable here.
    """

    def get_kernel_spec(self, kernel_name):
        return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f",
                                "{connection_file}"],
                          display_name="Python 3 ({})".format(sys.executable),
                          language="python", name=kernel_name)


@contextlib.contextmanager
def environ(values):
    """Set environment variables (inherited by the kernel) and restore them after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(nb, env, timeout=None):
    """Run every cell of ``nb`` in place (outputs replaced) with working directory
    notebooks/ and the extra environment ``env``; return (seconds, error message or None).
    """
    km = KernelManager(kernel_name="python3", kernel_spec_manager=ThisInterpreterKernels())
    client = NotebookClient(nb, km=km, timeout=timeout, startup_timeout=180,
                            record_timing=False, coalesce_streams=True,
                            resources={"metadata": {"path": HERE}})
    error = None
    start = time.time()
    with environ(env):
        try:
            client.execute()
        except CellExecutionError as err:
            error = str(err)
        finally:
            # nbclient leaves a kernel it did not create running: stop it here, or each
            # notebook's TensorFlow process would live until this process exits.
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    return time.time() - start, error


def terminal_text(text):
    """What a terminal shows for ``text``: carriage returns and backspaces (progress bars
    redrawn in place) overwrite the current line instead of piling up."""
    lines, line, col = [], [], 0
    for ch in text:
        if ch == "\n":
            lines.append("".join(line).rstrip())
            line, col = [], 0
        elif ch == "\r":
            col = 0
        elif ch == "\b":
            col = max(col - 1, 0)
        else:
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
    lines.append("".join(line).rstrip())
    return "\n".join(lines)


# Lines TensorFlow's C++ runtime prints to stderr when it starts, before its log level
# applies (absl "I0000 ..." lines: oneDNN, no CUDA driver): noise in a stored notebook.
STARTUP_NOISE = re.compile(r"^(I0000 \d\d:\d\d:.*|WARNING: All log messages before "
                           r"absl::InitializeLog\(\) is called are written to STDERR)$")


def opaque_png_as_rgb(data):
    """The base64 PNG ``data`` re-encoded without its alpha channel when every pixel is
    opaque (matplotlib's figures are): the same picture, about 15% fewer bytes."""
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    if image.mode != "RGBA" or image.getextrema()[3] != (255, 255):
        return data
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", optimize=True)
    smaller = base64.b64encode(buffer.getvalue()).decode("ascii")
    return smaller if len(smaller) < len(data) else data


def tidy(nb):
    """Make the outputs of ``nb`` fit for storing: progress bars redrawn in place are
    collapsed to what a terminal shows, TensorFlow's start-up lines are dropped, opaque
    PNGs lose their alpha channel."""
    for cell in nb.cells:
        outputs = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                lines = terminal_text(output["text"]).split("\n")
                if output.get("name") == "stderr":
                    lines = [line for line in lines if not STARTUP_NOISE.match(line)]
                output["text"] = "\n".join(lines)
                if not output["text"].strip():
                    continue
            elif "image/png" in output.get("data", {}):
                output["data"]["image/png"] = opaque_png_as_rgb(output["data"]["image/png"])
            outputs.append(output)
        if cell.cell_type == "code":
            cell["outputs"] = outputs
    return nb


def stdout_of(nb):
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def tutorial_env(weights=None):
    """Environment of a real run: tutorial settings, TensorFlow's C++ log quiet."""
    env = {"MRCNN_NB_FAST": "", "TF_CPP_MIN_LOG_LEVEL": os.environ.get(
        "TF_CPP_MIN_LOG_LEVEL", "3")}
    if weights:
        env["MRCNN_NB_WEIGHTS"] = os.path.abspath(weights)
    return env


def run(names, weights=None, timeout=None):
    """Execute ``names`` in order, writing each into its .ipynb; return 0 or 1."""
    for name in names:
        nb = read_synced(name)
        env = tutorial_env(weights if name in USES_CHECKPOINT else None)
        print("{}: running ({})".format(name, ", ".join(
            "{}={!r}".format(k, v) for k, v in sorted(env.items()))), flush=True)
        seconds, error = execute(nb, env, timeout)
        if error:
            print("{}: FAILED after {:.0f} s; {}.ipynb not written\n{}".format(
                name, seconds, name, error[-4000:]), flush=True)
            return 1
        write_notebook(tidy(nb), notebook_path(name))
        size = os.path.getsize(notebook_path(name)) / 1e6
        print("{}: {:.1f} min, {}.ipynb {:.2f} MB".format(name, seconds / 60, name, size),
              flush=True)
        if name == "train_shapes" and not weights:
            m = re.search(r"last checkpoint: (\S+)", stdout_of(nb))
            weights = m.group(1) if m else None
            print("checkpoint for the other notebooks:", weights, flush=True)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="notebooks to run, in the standard order (default: all of "
                             "{})".format(", ".join(NOTEBOOKS)))
    parser.add_argument("--weights", help="shapes checkpoint for {} (default: the one "
                        "train_shapes writes in this run, else the newest in the logs)"
                        .format(", ".join(USES_CHECKPOINT)))
    parser.add_argument("--sync-only", action="store_true",
                        help="only bring every .ipynb in line with its .py source "
                             "(outputs of unchanged cells kept); run nothing")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds allowed per cell (default: no limit)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(NOTEBOOKS))
    if unknown:
        parser.error("unknown notebook(s) {}; choose from {}".format(
            ", ".join(unknown), ", ".join(NOTEBOOKS)))
    if args.sync_only:
        for name in NOTEBOOKS:
            changed = write_notebook(read_synced(name), notebook_path(name))
            print("{}.ipynb {}".format(name, "updated" if changed else "in sync"))
        return 0
    names = [n for n in NOTEBOOKS if n in args.names] if args.names else list(NOTEBOOKS)
    start = time.time()
    status = run(names, args.weights, args.timeout)
    print("total: {:.1f} min".format((time.time() - start) / 60))
    return status


if __name__ == "__main__":
    sys.exit(main())
