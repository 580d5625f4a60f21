"""The `darknetpy` command: thin click wrappers around the library.

stdout carries only the product (generated text, valid's lines, info's table); progress, warnings
and banners go to stderr. Bad input is one line on stderr and exit code 2, never a traceback.
"""
import functools
import os
import sys
import warnings

import click

from . import cfg as cfgmod
from . import data as datamod
from . import entry
from . import generation
from . import measure
from . import options
from . import vocab as vocabmod
from .checkpoint import find_vocab, load_network
from .errors import DarknetpyError


def friendly(fn):
    """Turn input errors into one stderr line (exit 2), Ctrl-C into exit 130, cfg warnings into lines."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        def show(message, category, *_args, **_kwargs):
            click.echo(f"warning: {message}" if category is not cfgmod.CfgWarning else str(message), err=True)
        warnings.showwarning = show
        try:
            with entry.running():  # Ctrl-C outside the body: entry.py's one line and exit 130
                return fn(*args, **kwargs)
        except DarknetpyError as e:
            click.echo(f"darknetpy: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo(entry.MESSAGE, err=True)
            sys.exit(130)
        except MemoryError as e:  # numpy names the array: "Unable to allocate 12 GiB for an array with shape ..."
            click.echo(f"darknetpy: out of memory: {e}; lower batch or time_steps in the cfg, or use "
                       "smaller layers; checkpoints already written are intact", err=True)
            sys.exit(2)
        except BrokenPipeError:
            sys.stderr.close()
            sys.exit(1)
    return wrapper


def seed_bytes(text):
    """The bytes of a --seed argument exactly as typed (undecodable argv bytes survive)."""
    return os.fsencode(text)


PATH = click.Path(dir_okay=False)
TRAIN = options.TrainOptions()  # the training options' defaults, which --help shows
GENERATE = options.GenerationOptions()  # generate's
SERVE = options.ServeLimits()  # serve's
VOCAB_HELP = ("Vocabulary file (darknetpy-vocab). Default: the vocabulary of the run that made the "
              "weights: the one in WEIGHTS.state.npz, else the run's .vocab beside the weights (named "
              "after the weights, then after the cfg); without one, bytes (Darknet's), unless the "
              "model needs a vocabulary (then an error says where it looked).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="darknetpy")
def main():
    """Darknet's recurrent networks (rnn, gru, lstm) in numpy: train a char-RNN from a Darknet
    .cfg, save Darknet .weights, generate text and measure bits per character.

    \b
    Quick start:
      darknetpy train cfg/shakespeare.cfg data/tinyshakespeare.txt --time-budget 10m
      darknetpy generate cfg/shakespeare.cfg backup/shakespeare.backup --seed "ROMEO:"
    """


@main.command()
@click.argument("cfg", type=PATH)
@click.argument("weights", type=PATH)
@click.option("--seed", default=None, metavar="TEXT",
              help="Text fed to the network first and echoed; an empty seed feeds a NUL byte. "
                   "Default: two newlines.")
@click.option("--seed-file", default=None, metavar="FILE", help="Read the seed from FILE, as bytes (instead of --seed).")
@click.option("--len", "length", default=GENERATE.length, show_default=True, type=int, metavar="N",
              help="Number of characters (tokens) to sample after the seed, >= 0; with --stop, the most.")
@click.option("--temp", "temperature", default=GENERATE.temperature, show_default=True, type=float,
              help="Softmax temperature, > 0: lower is more conservative, higher more random. Applied before "
                   "--top-k and --top-p; no effect with --greedy or --beam.")
@click.option("--srand", type=int, default=GENERATE.srand,
              help="Random seed. With only Darknet's options (--seed --len --temp --tokens) it seeds "
                   "Darknet's glibc rand(), and the text is byte-identical to `darknet rnn generate "
                   "-srand N`; with --top-k, --top-p or --samples, numpy's generator, reproducible run to "
                   "run. Default: a fresh random seed each run.")
@click.option("--greedy", is_flag=True, default=GENERATE.greedy,
              help="Take the most likely symbol at every step (char-rnn's -sample 0).")
@click.option("--top-k", type=int, default=GENERATE.top_k, show_default=True, metavar="K",
              help="Sample only among the K most likely symbols (and any tied with the K-th); 0: all.")
@click.option("--top-p", type=float, default=GENERATE.top_p, show_default=True, metavar="P",
              help="Nucleus sampling: only among the smallest set of most likely symbols whose probability "
                   "reaches P, in (0, 1]; 1: every symbol.")
@click.option("--beam", type=int, default=GENERATE.beam, show_default=True, metavar="K",
              help="Beam search of width K: the --len continuation of highest total log-probability the "
                   "beam finds, never less likely than greedy's (--beam 1 is --greedy); 0: no search.")
@click.option("--samples", type=int, default=GENERATE.samples, show_default=True, metavar="N",
              help="N >= 1 independent samples, run together as N streams of the network.")
@click.option("--separator", default=generation.SEPARATOR, show_default=True, metavar="TEXT",
              help="The line printed between two samples.")
@click.option("--stop", default=GENERATE.stop, metavar="TEXT",
              help="End a sample right after it first produces TEXT (printed, then the final newline). "
                   "In bash, $'\\n\\n' stops at a blank line. Default: run --len symbols.")
@click.option("--tokens", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Token file for tokenized nets: line i is the text of id i (<NEWLINE> means a newline).")
@click.option("--vocab", "vocab_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help=VOCAB_HELP)
@friendly
def generate(cfg, weights, seed, seed_file, separator, stop, tokens, vocab_file, **fields):
    """Sample text from a trained network, streaming it to stdout (Darknet's `rnn generate`, and
    greedy, top-k, top-p, beam search, many samples at once and a stop text).

    CFG may be the training cfg: batch and time_steps are forced to 1.
    """
    if seed is not None and seed_file is not None:
        raise DarknetpyError("give the seed as --seed TEXT or --seed-file FILE, not both")
    if seed_file is not None:
        seed, seed_name = read_bytes(seed_file, "seed file"), seed_file
    else:
        seed, seed_name = seed_bytes(GENERATE.seed if seed is None else seed), "--seed"
    asked = options.GenerationOptions(seed=seed, stop=None if stop is None else seed_bytes(stop), **fields)
    net, vocabulary = stepping_network(cfg, weights, None if tokens else vocab_file, ids=bool(tokens))
    token_list = datamod.read_tokens(tokens) if tokens else None
    out = sys.stdout.buffer
    pieces = generation.output(net, asked, seed_bytes(separator), tokens=token_list, vocab=vocabulary,
                               seed_name=seed_name)
    for piece in pieces:
        out.write(piece)
        out.flush()


def stepping_network(cfg, weights, vocab_file, ids=False):
    """(net, vocabulary) for generate, valid and vec: the network with WEIGHTS loaded, one stream
    one step at a time, and the vocabulary of the run that made them (checkpoint.find_vocab, which refuses a
    model that needs one and has none). ids=True (--tokens names Darknet's ids): no search."""
    net = load_network(cfg, batch=1, time_steps=1)
    net.load_weights(weights)
    net.vocab = None if ids else find_vocab(cfg, weights, vocab_file, net)
    return net, net.vocab


def read_bytes(path, what):
    """A file's bytes, or one error line naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DarknetpyError(f"cannot read the {what}: {e.strerror}", path) from None


@main.command()
@click.argument("cfg", type=PATH)
@click.argument("weights", type=PATH)
@click.argument("text", type=click.Path(dir_okay=False, allow_dash=True), default="-")
@click.option("--seed", default=options.SEED.decode(), show_default="two newlines",
              help="Text fed first, unscored, to warm up the state.")
@click.option("--verbose", is_flag=True, help="Print Darknet's running line after every character.")
@click.option("--vocab", "vocab_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help=VOCAB_HELP)
@friendly
def valid(cfg, weights, text, seed, verbose, vocab_file):
    """Bits per character of TEXT (a file, or - for stdin) under the network (Darknet's `rnn valid`).

    The text is fed in order with the state carried. The last line has Darknet's form
    `N BPC: x   Perplexity: y    Word Perplexity: z`, so scripts can parse either tool.
    """
    from . import evaluate
    net, vocabulary = stepping_network(cfg, weights, vocab_file)
    if vocabulary is None or vocabulary.mode == "bytes":
        ids, seed_ids, spaces = datamod.load_corpus(text, net.inputs).tobytes(), seed_bytes(seed), (32, 10, 9)
    else:
        ids, seed_ids, spaces = vocabmod.encode_for_valid(vocabulary, text, seed_bytes(seed))
        if vocabulary.mode == "words":
            click.echo("note: words vocabulary: BPC here is bits per token and N counts tokens", err=True)
    last = None
    for last in evaluate.valid_steps(net, ids, seed=seed_ids, spaces=spaces):
        if verbose:
            click.echo(evaluate.format_valid_line(*last))
    if not verbose:
        click.echo(evaluate.format_valid_line(*last))


@main.command()
@click.argument("cfg", type=PATH)
@click.argument("weights", type=PATH)
@click.argument("text", type=click.Path(dir_okay=False, allow_dash=True), default="-")
@click.option("--seed", default=options.SEED.decode(), show_default="two newlines",
              help="Text fed before every line, from a zero state.")
@click.option("--keep-whitespace", is_flag=True,
              help="Feed each line as it is. Default: as Darknet's strip(), drop every space and tab in it "
                   "(also from the printed line).")
@click.option("--vocab", "vocab_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help=VOCAB_HELP)
@friendly
def vec(cfg, weights, text, seed, keep_whitespace, vocab_file):
    """One CSV row per line of TEXT (a file, or - for stdin): the line, then the first layer's
    outputs once the network has read the seed, the line and a space (Darknet's `rnn vec`).

    Every line starts from a zero state, which Darknet does only on its GPU path, so a row does not
    depend on the lines before it. A line holding a comma, quote or carriage return is quoted as
    CSV quotes it.
    """
    from . import evaluate
    net, vocabulary = stepping_network(cfg, weights, vocab_file)
    raw = sys.stdin.buffer.read() if text == "-" else read_bytes(text, "text")
    lines = raw.split(b"\n")
    if lines[-1] == b"":  # a final newline ends the last line, it does not start one
        lines.pop()
    out = sys.stdout.buffer
    rows = evaluate.vec_rows(net, lines, seed=seed_bytes(seed), vocab=vocabulary, strip=not keep_whitespace,
                           name="stdin" if text == "-" else text)
    for line, vector in rows:
        out.write(csv_field(line) + b"".join(b",%g" % v for v in vector.tolist()) + b"\n")


def csv_field(raw):
    """A CSV field: quoted, its quotes doubled, when it holds a comma, a quote or a line break."""
    if any(ch in raw for ch in b',"\r\n'):
        return b'"' + raw.replace(b'"', b'""') + b'"'
    return raw


@main.command()
@click.argument("cfg", type=PATH)
@click.argument("weights", type=PATH, required=False)
@friendly
def info(cfg, weights):
    """The layer table of CFG, its parameter count and the exact size of its weights file;
    with WEIGHTS, whether that file fits the cfg."""
    from . import weights as weightsmod
    from .network import Network
    net = Network(cfg)
    rows = [("#", "type", "inputs -> outputs", "activation", "bn", "parameters")]
    for i, (layer, section) in enumerate(zip(net.layers, net.sections)):
        act = layer.describe()
        bn = "yes" if any(d.bn for d in layer.denses) else ""
        count = sum(v.size for v in layer.params().values())
        rows.append((str(i), section.type, f"{layer.inputs} -> {layer.outputs}", act, bn, str(count)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.rjust(w) if c in (0, 5) else v.ljust(w) for c, (v, w) in enumerate(zip(r, widths))).rstrip())
    total = sum(v.size for v in net.params().values())
    click.echo(f"parameters: {total}")
    click.echo(f"streams: {net.streams}  time_steps: {net.time_steps}  subdivisions: {net.subdivisions}")
    click.echo(f"weights file: {weightsmod.expected_size(net)} bytes")
    for i, layer in enumerate(net.layers):
        if layer.note():
            click.echo(f"layer {i} [{layer.kind}]: {layer.note()}")
    if weights:
        net.load_weights(weights)  # refuses a file that does not fit, with the reason
        click.echo(f"{weights}: fits ({os.path.getsize(weights)} bytes, seen {net.seen})")


@main.command()
@click.argument("cfg", required=False)  # plain strings: the library names a bad path in one line
@click.argument("data", required=False)
@click.option("--weights", default=TRAIN.weights, metavar="WEIGHTS",
              help="Start from these weights (and continue from their `seen`); a .state.npz beside "
                   "them, as every checkpoint has, restores the optimizer and data walk exactly.")
@click.option("--clear", is_flag=True, help="Set seen to 0 (Darknet's -clear): a new run from --weights.")
@click.option("--tokenized", is_flag=True, help="DATA holds whitespace-separated integer ids, not bytes.")
@click.option("--vocab", default=TRAIN.vocab, metavar="bytes|chars|words|FILE",
              help="What an id is: a byte (Darknet's), a Unicode character or a word of the UTF-8 corpus "
                   "(built from all of DATA, saved as BACKUP/<cfg>.vocab), or the tokens of a .vocab FILE. "
                   "Default: the vocabulary of --weights' run (in their .state.npz, or its .vocab beside "
                   "them), else bytes.")
@click.option("--max-vocab", type=int, default=TRAIN.max_vocab, metavar="N",
              help="With --vocab words: at most N tokens, the N-1 most frequent and <unk> for the "
                   "rest. Default: no cap.")
@click.option("--valid-full", is_flag=True,
              help="At the end, score the whole held-out part (slow on big corpora). Default: the "
                   f"periodic and final estimates score its first {datamod.VALID_SLICE} ids.")
@click.option("--backup", "backup", default=TRAIN.backup, show_default=True, metavar="DIR",
              help="Directory for checkpoints and the run record; created if missing.")
@click.option("--max-batches", type=int, default=TRAIN.max_batches, metavar="N",
              help="Stop when this many updates in total (counted from seen) are done. "
                   "Default: max_batches in the cfg.")
@click.option("--srand", type=int, default=TRAIN.srand,
              help="Seed for weight init and the data walk; the same seed gives the same run, bit "
                   "for bit. Default: a fresh seed, noted in the run record.")
@click.option("--valid-frac", type=float, default=TRAIN.valid_frac,
              help="Fraction of the corpus held out at its END for validation, never trained on. "
                   f"Default: {datamod.VALID_FRAC} when the corpus is big enough, else 0.")
@click.option("--valid-every", type=int, default=TRAIN.valid_every, metavar="N",
              help="Print held-out bits per character every N iterations (and at the end); 0: only at the end. "
                   "Default: 500; with --time-budget also at least a tenth of the budget apart (at most about ten "
                   "validations, whatever the machine's speed).")
@click.option("--save-every", type=int, default=TRAIN.save_every, show_default=True, metavar="N",
              help="Also keep BACKUP/<cfg>_<N>.weights every N iterations; 0: never.")
@click.option("--resume", default=None, metavar="RECORD.yaml",
              help="Continue the run a record BACKUP/<cfg>.yaml describes, from its latest checkpoint "
                   "(or from --weights W), in the record's folder, with the cfg copied there "
                   "(options given here override the record's).")
@click.option("--overwrite", is_flag=True,
              help="Let a new run (or one from --weights outside BACKUP) replace the earlier run kept "
                   "in BACKUP/<cfg>.backup, from its first checkpoint on. Without it such a run refuses, "
                   "so that running the same command twice cannot lose a run.")
@click.option("--log-every", type=int, default=TRAIN.log_every, show_default=True, metavar="N",
              help="Append a row to BACKUP/<cfg>.metrics.csv every N iterations (and at every "
                   "validation); 0: only at validations and the end.")
@click.option("--sample-every", type=int, default=TRAIN.sample_every, show_default=True, metavar="N",
              help="Print a sample to stderr every N iterations, from a copy of the weights (training "
                   "is not disturbed: the same weights come out with or without); 0: never.")
@click.option("--sample-len", type=int, default=TRAIN.sample_len, show_default=True, metavar="N",
              help="Characters (tokens) per --sample-every sample, after a seed of one newline (id 0 for tokenized corpora).")
@click.option("--sample-temp", type=float, default=TRAIN.sample_temp, show_default=True,
              help="Softmax temperature of the --sample-every samples (generate's default).")
@click.option("--patience", type=int, default=TRAIN.patience, metavar="K",
              help="End the run normally (final weights written, exit 0) after K validations in a row "
                   "without a new best. Default: off.")
@click.option("--time-budget", default=TRAIN.time_budget, metavar="DURATION",
              help="Train for this long (600, 90s, 10m, 10min, 2h, 1h30m, 1.5h): max_batches is set from "
                   "the speed of the first iterations and the cfg's learning-rate schedule stretched to end "
                   "by then. With --resume: this much more. Default: off (max_batches decides).")
@click.option("--learning-rate", type=float, default=TRAIN.learning_rate, metavar="X",
              help="The schedule's base rate instead of the cfg's learning_rate; noted in the run record, "
                   "which --resume keeps. Default: the cfg's.")
@click.pass_context
@friendly
def train(ctx, cfg, data, resume, **fields):
    """Train CFG on the corpus DATA, Darknet's `rnn train` (a char-RNN over bytes, or ids with --tokenized).

    Each of the cfg's batch/subdivisions streams walks the corpus from its own offset with its
    state carried; the last --valid-frac of the corpus is held out. Checkpoints: BACKUP/<cfg>.backup
    every 100 iterations and on Ctrl-C, SIGTERM or SIGHUP (exit 130, 143, 129),
    BACKUP/<cfg>_<N>.weights every --save-every, BACKUP/<cfg>_best.weights at each new best
    validation, BACKUP/<cfg>_final.weights at the end, each with a .state.npz for exact resume; the
    run record BACKUP/<cfg>.yaml, the metrics log BACKUP/<cfg>.metrics.csv (see `darknetpy plot`)
    and a copy of the cfg, BACKUP/<cfg>.cfg. The record names them relative to BACKUP, so a copied
    or moved folder resumes its own run. One training at a time writes into a folder: a second is
    refused while the first lives. Progress goes to stderr; stdout stays empty.

    Training more: --resume with --time-budget (that much more) or a higher --max-batches
    continues a run, finished or not, and the learning rate goes on without a jump. With
    --time-budget, or on a run that had one, the part of the cfg's schedule still ahead is spread
    over the updates left and ends at the new end; a plain run keeps the cfg's schedule by update
    number, as Darknet does. A run that had reached the end of its schedule (poly at 0) starts
    the schedule again over the added updates, from learning_rate and without burn_in (a warm
    restart; --learning-rate sets its height). A --resume that keeps the end continues exactly.
    """
    from click.core import ParameterSource

    from . import train as trainmod
    from .checkpoint import read_record
    given = {name for name in fields if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    if resume is not None:
        if cfg is not None or data is not None:
            raise DarknetpyError("--resume takes CFG and DATA from the run record; give either CFG DATA or --resume")
        if fields["clear"]:
            raise DarknetpyError("--clear starts a new count of updates and cannot continue a run; drop --resume or --clear")
        recorded = read_record(resume, need_latest="weights" not in given)
        cfg, data = recorded.pop("cfg"), recorded.pop("data")
        if fields["time_budget"] is not None:  # the budget sets the end anew
            given.add("max_batches")
        fields.update({k: v for k, v in recorded.items() if k in options.TrainOptions.resumed() and k not in given})
    elif cfg is None or data is None:
        raise DarknetpyError("give CFG and DATA (or --resume BACKUP/<cfg>.yaml); see darknetpy train --help")
    summary = trainmod.train(cfg, data, options.TrainOptions(**fields, resumed_from=resume))
    click.echo(trainmod.format_summary(summary), err=True)
    if summary["exit_code"]:
        sys.exit(summary["exit_code"])  # 130 after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP


@main.command()
@click.argument("cfg", type=PATH)
@click.argument("weights", type=PATH)
@click.option("-o", "--output", required=True, type=PATH, metavar="MODEL.onnx",
              help="Where to write the ONNX model; an existing file is replaced atomically.")
@click.option("--sequence", is_flag=True,
              help="Export the sequence graph: ids (steps, streams) in, probs (steps, streams, outputs) out, "
                   "for scoring many steps in one call. Default: the step graph, one step per call, for "
                   "generation.")
@click.option("--vocab", "vocab_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help=VOCAB_HELP + " Stored in the model's metadata.")
@friendly
def export(cfg, weights, output, sequence, vocab_file):
    """Write the network at inference as an ONNX model MODEL.onnx that onnxruntime (Python, C, C#,
    Java, JavaScript) runs with darknetpy's probabilities. Inputs: ids (int64), state (float32
    [streams, S], zeros for a fresh state) and temperature (default: the cfg's softmax
    temperature); outputs: probs and state_out. The metadata holds S, the state layout, the cfg
    and the vocabulary. Needs the onnx package: pip install "darknetpy[onnx]".

    CFG may be the training cfg: batch and time_steps are forced to 1.
    """
    from . import export as exportmod
    model = exportmod.export(cfg, weights, output, sequence=sequence, vocab=vocab_file)
    props = {p.key: p.value for p in model.metadata_props}
    click.echo(f"wrote {output}: the {'sequence' if sequence else 'step'} graph, state of "
               f"{props['darknetpy.state_size']} floats ({props['darknetpy.state_layout'] or 'none'})", err=True)


@main.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("-o", "--output", default=None, metavar="FILE.png",
              help="Where to write the figure. Default: <first RUN>.png beside it.")
@friendly
def plot(runs, output):
    """Draw the curves of one or more runs into a PNG: training loss and held-out bits per
    character against iterations and against wall time, the best validation marked.

    Each RUN is a run record BACKUP/<cfg>.yaml or its BACKUP/<cfg>.metrics.csv; several overlay,
    with a legend. Needs matplotlib: pip install "darknetpy[plot]".
    """
    from . import plot as plotmod
    path = plotmod.plot(runs, output)
    click.echo(f"wrote {path}", err=True)


@main.command()
@click.argument("sample", type=click.Path(dir_okay=False, allow_dash=True))
@click.argument("corpus", type=PATH)
@click.option("--window", type=click.IntRange(min=1), default=20, show_default=True, metavar="N",
              help="Window length in bytes for the share of the sample's windows found in CORPUS.")
@click.option("--valid-frac", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Leave out the last F of CORPUS first, as `darknetpy train --valid-frac F` held it out "
                   "(by default it holds out 0.05 when the corpus is large enough), to compare with the trained part only. 0: all of it.")
@friendly
def overlap(sample, corpus, window, valid_frac):
    """How much of SAMPLE (a generated text; - for stdin) is copied from CORPUS (the training
    text): did the model only memorise? Compares bytes, exactly.

    Prints two lines: the longest substring SAMPLE shares with CORPUS (its length in bytes, where it
    starts in SAMPLE, and the text on one line in double quotes: backslash, quote, newline, tab and
    CR escaped as in C, other control characters as \\uNNNN, bytes that are not UTF-8 as \\xNN), and
    how many of SAMPLE's N-byte windows occur anywhere in CORPUS (torch-rnn's novel_substrings: a
    high share means copied text).
    """
    from . import overlap as overlapmod
    text = sys.stdin.buffer.read() if sample == "-" else read_bytes(sample, "sample")
    reference = datamod.split_corpus(read_bytes(corpus, "corpus"), valid_frac, corpus)[0]
    r = overlapmod.measure(text, reference, window)
    click.echo(f"longest shared substring: {r.longest} bytes at sample byte {r.at}: {overlapmod.one_line(r.text)}")
    if r.windows:
        click.echo(f"{window}-byte windows found in the corpus: {r.found} of {r.windows} ({100 * r.share:.1f}%)")
    else:
        click.echo(f"{window}-byte windows found in the corpus: none to check (the sample has {len(text)} bytes)")


@main.command()
@click.argument("text", nargs=-1, required=True)
@click.option("--vocab", "mode", type=click.Choice(["chars", "words"]), default="chars", show_default=True,
              help="Token kind: Unicode characters, or words/whitespace/punctuation.")
@click.option("-o", "prefix", required=True, metavar="PREFIX",
              help="Write PREFIX.ids, PREFIX.tokens and PREFIX.vocab.")
@click.option("--max-vocab", type=click.IntRange(min=2), default=None, metavar="N",
              help="With --vocab words: at most N tokens, the N-1 most frequent and <unk> for the "
                   "rest. Default: no cap.")
@friendly
def tokenize(text, mode, prefix, max_vocab):
    """Turn UTF-8 TEXT files (or folders) into ids for the C Darknet: PREFIX.ids for
    `darknet rnn train -tokenized`, PREFIX.tokens for `darknet rnn generate -tokens`, and PREFIX.vocab
    for darknetpy. Prints the vocabulary size and the cfg lines it needs."""
    vocabulary, count = vocabmod.tokenize(list(text), mode, prefix, max_vocab)
    click.echo(f"vocabulary: {vocabulary.size} {mode} ({count} ids in {prefix}.ids)")
    click.echo(f"inputs={vocabulary.size}")
    click.echo(f"(in [net]; and output={vocabulary.size} or more in the last layer before [softmax])", err=True)


@main.command()
@click.argument("cfg", type=PATH)
@click.argument("weights", type=PATH)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 serves other machines too (then set --api-key).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on; 0 takes a free one (the `serving on` line names it).")
@click.option("--max-streams", default=SERVE.max_streams, show_default=True, type=click.IntRange(min=1),
              help="Streams stepped together at most: the requests running at once (a request takes n "
                   "streams, a beam its width).")
@click.option("--max-queue", default=SERVE.max_queue, show_default=True, type=click.IntRange(min=0),
              help="Requests waiting for streams at most; past it a request gets 503 with Retry-After.")
@click.option("--max-prompt", default=SERVE.max_prompt, show_default=True, type=click.IntRange(min=1), metavar="BYTES",
              help="The longest prompt a request may give (413 past it).")
@click.option("--max-length", default=SERVE.max_length, show_default=True, type=click.IntRange(min=1), metavar="N",
              help="The most symbols a request may ask for (max_tokens, length).")
@click.option("--max-samples", default=SERVE.max_samples, show_default=True, type=click.IntRange(min=1), metavar="N",
              help="The most samples (n) or beam width a request may ask for (at most --max-streams).")
@click.option("--api-key", envvar="DARKNETPY_API_KEY", default=None, metavar="KEY",
              help="Require 'Authorization: Bearer KEY' on every endpoint but /health. Default: the "
                   "environment variable DARKNETPY_API_KEY, else no key.")
@click.option("--vocab", "vocab_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help=VOCAB_HELP)
@friendly
def serve(cfg, weights, host, port, max_streams, max_queue, max_prompt, max_length, max_samples, api_key,
          vocab_file):
    """Serve generation over HTTP: OpenAI's completions API (/v1/completions, /v1/models), every
    `generate` option (/v1/generate), /health, and a playground page at /. Concurrent requests run
    as streams of one step (continuous batching); a request with a seed gets the text it gets alone.
    Stops on SIGTERM or Ctrl-C, letting running requests finish for a few seconds. Needs the serve
    extra: pip install "darknetpy[serve]".
    """
    try:
        from . import serve as serving
    except ImportError as e:
        raise DarknetpyError(f'serve needs the [serve] extra ({e.name} is missing): pip install "darknetpy[serve]"')
    net = load_network(cfg, weights, batch=1, time_steps=1)
    net.vocab = find_vocab(cfg, weights, vocab_file, net)
    limits = options.ServeLimits(max_streams=max_streams, max_queue=max_queue, max_prompt=max_prompt,
                            max_length=max_length, max_samples=min(max_samples, max_streams), api_key=api_key)
    serving.serve(net, os.path.splitext(os.path.basename(cfg))[0], host, port, limits)


@main.command()
@click.argument("cfg", type=PATH)
@click.option("--iterations", default=measure.ITERATIONS, show_default=True, type=click.IntRange(min=1),
              help="Timed training steps (full datums of time_steps x streams random chars); the median is reported.")
@click.option("--warmup", default=measure.WARMUP, show_default=True, type=click.IntRange(min=0),
              help="Untimed training steps before timing; generation likewise discards its first 10 x N chars.")
@click.option("--gen-chars", default=measure.GEN_CHARS, show_default=True, type=click.IntRange(min=1),
              help="Characters to generate (one stream, one char at a time, as `darknetpy generate`).")
@click.option("--no-train", is_flag=True, help="Skip the training measurement.")
@click.option("--no-generate", is_flag=True, help="Skip the generation measurement.")
@friendly
def bench(cfg, iterations, warmup, gen_chars, no_train, no_generate):
    """Measure training and generation speed of the network CFG describes, with random weights
    and random characters: chars/s, the matmul GFLOP/s achieved (against numpy's own large-matmul
    peak on this machine), and peak memory.

    Training uses CFG's batch and time_steps (one update per step); generation forces batch=1,
    time_steps=1. The FLOP model is in `darknetpy.measure`'s docstring. For a table of the standard
    configs, with PyTorch for comparison, see benchmarks/throughput.py.
    """
    r = measure.run_config(cfg, iterations=iterations, warmup=warmup, gen_chars=gen_chars,
                           train=not no_train, generate=not no_generate, peak=True)
    click.echo(measure.report(cfg, r))
