"""The `companion` console script.

Each subcommand declares its arguments here and imports its implementation only when run, so
`companion --help` and `companion run` start fast and never pull in torch. Implementations
raise CompanionError for bad input; main() prints its one sentence and returns 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module

from midi_companion import __version__
from midi_companion.errors import CompanionError

# name -> (module:function, one-line help, function that adds the arguments)
_COMMANDS: dict[str, tuple[str, str, object]] = {}


def command(name: str, target: str, help: str):
    """Register a subcommand whose implementation is `module:function(args) -> int`."""

    def deco(add_arguments):
        _COMMANDS[name] = (target, help, add_arguments)
        return add_arguments

    return deco


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="companion",
        description="A real-time MIDI companion for your DAW: call and response and live "
        "accompaniment from ONNX models.",
    )
    parser.add_argument("--version", action="version", version=f"midi-companion {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (target, help_, add_arguments) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_target=target)
        add_arguments(p)
    return parser


TRAINING_MODULES = {"torch", "onnx", "onnxscript", "music21", "tqdm"}  # the `train` extra


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_target", None):
        parser.print_help()
        return 0
    module, func = args._target.split(":")
    try:
        return int(getattr(import_module(module), func)(args) or 0)
    except CompanionError as err:
        if args.debug:
            raise
        print(f"companion: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if args.debug or (err.name or "").split(".")[0] not in TRAINING_MODULES:
            raise
        print(
            f"companion: error: `companion {args.command}` needs the training extra "
            f"({err.name} is not installed): pip install -c constraints.txt "
            f"'midi-companion[train]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `companion presets show jam | head`: the reader left, fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# ---- argument types: a bad value is argparse's one-line error and exit code 2 -------------
def _ranged(kind, lo, hi, what: str):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, received {text!r}") from None
        if not (lo <= v <= hi):  # also refuses nan
            raise argparse.ArgumentTypeError(f"expected {what}, received {text!r}")
        return v

    parse.__name__ = what  # argparse names the type in some messages
    return parse


SEED = _ranged(int, 0, 2**63 - 1, "a whole number >= 0")
BARS = _ranged(int, 1, 64, "a whole number of bars from 1 to 64")
BPM = _ranged(float, 20.0, 300.0, "a tempo from 20 to 300 bpm")
POSITIVE = _ranged(int, 1, 2**31 - 1, "a whole number >= 1")
BEAT = _ranged(float, 0.0, 1e6, "a beat number >= 0")


def _provider_arg(p) -> None:
    """--provider, shared by run, eval and bench (companion.engine.open_session)."""
    p.add_argument(
        "--provider",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="onnxruntime execution provider. auto (default) runs on the CPU: "
        "these are small step graphs, ~0.1 ms a step there, less than a CUDA "
        "launch costs, and it says why CUDA is not used; cpu never tries "
        "CUDA; cuda runs on the GPU or stops with the reason it cannot",
    )


# ---- subcommands -------------------------------------------------------------------------


@command("run", "midi_companion.daemon:main", "Listen on a MIDI port and play along, live.")
def _run_args(p):
    p.add_argument(
        "preset", nargs="?", help="preset name or path to a .toml (default: the default preset)"
    )
    p.add_argument(
        "--in",
        dest="inp",
        metavar="PORT",
        help="connect to an existing input port (name substring) instead of "
        "opening the virtual 'midi-companion in'",
    )
    p.add_argument(
        "--out",
        metavar="PORT",
        help="connect to an existing output port (name substring) instead of "
        "opening the virtual 'midi-companion out'",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "native", "jack"],
        default="auto",
        help="MIDI system: the platform's (CoreMIDI, ALSA, WinMM) or JACK; auto "
        "(default) is the platform's, or JACK on Linux when no ALSA sequencer "
        "is there but a JACK server runs (the choice is printed)",
    )
    p.add_argument(
        "--clock",
        choices=["internal", "midi"],
        default="internal",
        help="internal tempo, or follow the DAW's MIDI clock on the input port",
    )
    p.add_argument("--bpm", type=BPM, help="internal tempo (default: the preset's)")
    p.add_argument(
        "--record",
        metavar="FILE.mid",
        help="record the player and the companion, flushed every 2 s and on exit",
    )
    p.add_argument("--seed", type=SEED, help="random seed for sampling")
    p.add_argument("--quiet", action="store_true", help="no status line")
    p.add_argument(
        "--log-json", action="store_true", help="one JSON line per event on stdout, for scripts"
    )
    _provider_arg(p)


@command("ports", "midi_companion.commands:ports", "List MIDI input and output ports.")
def _ports_args(p):
    p.add_argument(
        "--backend",
        choices=["auto", "native", "jack"],
        default="auto",
        help="MIDI system (as for run)",
    )


@command(
    "presets",
    "midi_companion.commands:presets_cmd",
    "List presets, or show one with its defaults filled in.",
)
def _presets_args(p):
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("name", nargs="?", help="preset name or path (for show)")


@command(
    "continue",
    "midi_companion.commands:continue_cmd",
    "Continue a MIDI file with a preset's model (offline, same code as live).",
)
def _continue_args(p):
    p.add_argument("preset", help="preset name or path to a .toml")
    p.add_argument("input", metavar="IN.mid")
    p.add_argument("-o", "--output", metavar="OUT.mid", required=True)
    p.add_argument("--bars", type=BARS, help="length of the continuation (default: preset's)")
    p.add_argument("--seed", type=SEED, default=0)


@command(
    "accompany",
    "midi_companion.commands:accompany_cmd",
    "Accompany a MIDI file's melody with a preset's model (offline, same code as live).",
)
def _accompany_args(p):
    p.add_argument("preset", help="preset name or path to a .toml")
    p.add_argument("input", metavar="IN.mid")
    p.add_argument("-o", "--output", metavar="OUT.mid", required=True)
    p.add_argument("--seed", type=SEED, default=0)


@command(
    "demo",
    "midi_companion.demo:main",
    "No DAW, no MIDI hardware: play a built-in phrase through the live pipeline.",
)
def _demo_args(p):
    p.add_argument("preset", nargs="?", help="preset name or path (default: the default)")
    p.add_argument("-o", "--output", metavar="OUT.mid", default="companion-demo.mid")
    p.add_argument("--seed", type=SEED, default=0)


@command(
    "render",
    "midi_companion.render:main",
    "Draw a MIDI file as a piano roll picture (PNG): a colour per track, beats and bars "
    "marked, the prompt paler than the answer with --split.",
)
def _render_args(p):
    p.add_argument("input", metavar="FILE.mid")
    p.add_argument("-o", "--output", metavar="FILE.png", required=True)
    p.add_argument(
        "--from", dest="start", type=BEAT, metavar="BEAT", help="first beat drawn (default: 0)"
    )
    p.add_argument(
        "--to",
        dest="end",
        type=BEAT,
        metavar="BEAT",
        help="last beat drawn (default: where the last note ends)",
    )
    p.add_argument(
        "--split",
        type=BEAT,
        metavar="BEAT",
        help="mark the prompt/answer boundary at BEAT: notes starting before it are drawn paler",
    )


@command(
    "report",
    "midi_companion.quality:main",
    "Measure what the presets play (beat, key, range, voice leading, Yang & Lerch) on "
    "their models' held-out prompts, against real music and a Markov floor; write "
    "docs/QUALITY.md (needs the training extra: music21).",
)
def _report_args(p):
    p.add_argument(
        "presets",
        nargs="*",
        default=["folk", "piano", "chorale"],
        help="presets to measure (default: folk piano chorale)",
    )
    p.add_argument("-o", "--output", metavar="QUALITY.md", default="docs/QUALITY.md")
    p.add_argument(
        "--pieces", type=POSITIVE, default=40, help="held-out pieces per preset (default 40)"
    )
    p.add_argument("--seeds", type=POSITIVE, default=3, help="seeds per piece (default 3)")
    p.add_argument("--json", metavar="FILE.json", help="also write every number as JSON")


@command(
    "eval",
    "midi_companion.evaluate:main",
    "A model's likelihood from its ONNX file: benchmark NLL per frame, or NLL per token "
    "on its own held-out split.",
)
def _eval_args(p):
    p.add_argument("model", metavar="MODEL.onnx")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--benchmark",
        choices=["jsb", "nottingham", "musedata", "piano-midi"],
        help="test NLL per frame (nats) on a polyphonic benchmark",
    )
    what.add_argument(
        "--split",
        choices=["valid", "test"],
        help="NLL per token, note or step (nats) on the model's own held-out split",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--batch", type=POSITIVE, default=64, help="pieces rolled out side by side")
    p.add_argument("--threads", type=POSITIVE, default=1, help="onnxruntime intra-op threads")
    _provider_arg(p)


@command(
    "train",
    "midi_companion.models.train:main",
    "Train a model from a TOML config (needs the training extra: torch).",
)
def _train_args(p):
    p.add_argument("config", metavar="CONFIG.toml")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run's last.pt (same model, representation, data)",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="override [train] device (auto = CUDA when present)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        metavar="M",
        help="override [train] max_minutes (the wall-clock budget of the run)",
    )


@command(
    "restyle",
    "midi_companion.models.restyle:main",
    "Restyle a MIDI file towards a style of the classifier by gradient ascent on its voices' "
    "pitches (offline; needs the training extra: torch).",
)
def _restyle_args(p):
    p.add_argument("input", help="the MIDI file to restyle (each track a voice)")
    p.add_argument(
        "--to",
        required=True,
        metavar="STYLE",
        help="a class of the classifier "
        "(e.g. bach, essen, irish, palestrina, quartets) or one of its collections",
    )
    p.add_argument("-o", "--output", required=True, help="the restyled MIDI file to write")
    p.add_argument(
        "--classifier",
        default=None,
        help="classifier model file (default: the zoo's classifier.onnx)",
    )
    p.add_argument("--steps", type=int, default=200, help="gradient steps (default 200)")
    p.add_argument("--l2", type=float, default=1.0, help="weight of the L2 pull to the original")
    p.add_argument("--continuity", type=float, default=0.5, help="weight against large leaps")
    p.add_argument(
        "--notes-per-beat",
        type=float,
        default=4,
        help="at most this many notes start in a beat (0 = no limit; default 4)",
    )
    p.add_argument("--seed", type=int, default=0)


@command(
    "export",
    "midi_companion.export.onnx_export:main",
    "Export a training checkpoint to an ONNX model file, checked against torch.",
)
def _export_args(p):
    p.add_argument("checkpoint", metavar="CHECKPOINT.pt")
    p.add_argument("-o", "--output", metavar="MODEL.onnx", required=True)
    p.add_argument(
        "--float16",
        action="store_true",
        help="store the weights as float16: half the file; the model is the "
        "rounded one, parity-checked and evaluated as such",
    )


@command(
    "bench",
    "midi_companion.bench:main",
    "Measure latency, timing, inference, start-up and memory through a private JACK "
    "server; write docs/BENCHMARKS.md and its JSON.",
)
def _bench_args(p):
    p.add_argument(
        "--smoke",
        action="store_true",
        help="short runs (a 30 s session instead of 10 minutes), e.g. for CI",
    )
    p.add_argument("--period", type=int, default=64, help="JACK period in frames")
    p.add_argument("--rate", type=int, default=48000, help="JACK sample rate in Hz")
    p.add_argument(
        "--jack-async",
        action="store_true",
        help="run jackd in its default asynchronous mode instead of -S (a late "
        "client then loses that cycle's MIDI)",
    )
    p.add_argument(
        "--jack-no-realtime",
        action="store_true",
        help="run jackd with --no-realtime even where real-time scheduling is granted (by "
        "default it runs real-time there, as JACK does for its users)",
    )
    p.add_argument(
        "--session-s", type=float, help="length of the continuous-play session in seconds"
    )
    p.add_argument("--zoo", metavar="DIR", help="where the models are (default: models/zoo)")
    p.add_argument(
        "--only",
        nargs="+",
        choices=[
            "floor",
            "harmonize",
            "timing",
            "jam",
            "session",
            "startup",
            "engine",
            "speculation",
        ],
        help="run only these measurements, merged into the report there (the "
        "others kept); engine and speculation alone start no JACK server",
    )
    _provider_arg(p)
    p.add_argument("--markdown", default="docs/BENCHMARKS.md", metavar="FILE.md")
    p.add_argument("--json", default="docs/benchmarks.json", metavar="FILE.json")
