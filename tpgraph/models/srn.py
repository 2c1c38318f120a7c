"""The paper's simple recurrent network, unrolled into a tpgraph graph (Eqs. 13-17).

Per time step ``t = 1..L``: data ``x_t`` (integer symbols, one-hot by gather),
``h_t = tanh(W_xh x_t + W_h h_{t-1} + b_h)`` with a ``dtp`` edge back to
``h_{t-1}`` through the step-wise inverse ``G(x_t, h_t) = tanh(V_h h_t +
W_xh x_t + c_h)`` (which uses ``W_xh`` without training it), logits
``y_t = W_hy h_t + b_y`` with a ``gradient`` edge back to ``h_t``, and a
cross-entropy ``E_t`` against labels ``l_t``. ``h_0`` is a data input held at
zero. Many-to-one keeps only ``y_L``, ``l_L``, ``E_L``.

For real-valued sequences (the adding problem) ``inputs="real"`` declares
``x_t`` as real data ``[B, n_in]`` instead; for regression targets
``output="linear"`` declares ``y_t = W_hy h_t + b_y`` as a linear dense node
(``act="identity"``) compared with real targets ``l_t`` by a squared-error
loss ``E_t = 1/2 ||y_t - l_t||^2`` (the graph's ``mse`` kind). Both are
declarations only: the engine runs them like any other graph.

Nothing here is special-cased in the engine: :func:`build_srn` only declares
a graph; :class:`SRN` compiles it once per sequence length and trains it.
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import numpy as np

from ..engine import Engine, plan_memory
from ..errors import ConfigError, DataError, GraphError
from ..graph import Graph
from ..kernels.losses import argmax_rows
from ..memory import STRUCTURE_BYTES_PER_NODE, MemoryEstimate, check_memory, parse_bytes
from ..inverses import ANALYTIC_REG, get_inverse_kind, known_inverse_kinds
from ..inverse_losses import get_inverse_loss, known_inverse_losses
from ..params import ParamStore
from ..plan import Plan, compile_plan, paused_gc
from ..rules import get_rule
from ..tasks.base import sequence_accuracy, step_accuracy, within_tolerance

#: The initialisation of the authors' code (NOTES.md): orthogonal recurrent
#: and inverse matrices, N(0, 0.1^2) input and output weights, zero biases.
PAPER_INIT = {
    "W_xh": "normal:0.1",
    "W_h": "orthogonal",
    "b_h": "zeros",
    "W_hy": "normal:0.1",
    "b_y": "zeros",
    "V_h": "orthogonal",
    "c_h": "zeros",
}

FORWARD_GROUPS = ("W_xh", "W_h", "b_h")
INVERSE_GROUPS = ("V_h", "c_h")
#: The joint inverse's context group and its initialisation. ``V_y [n_hidden, n_out]`` maps the logits
#: into the inverse's pre-activation; N(0, 0.1^2) like the other maps from and to the logits
#: (``W_hy``, ``W_xh``): small, so that at the start ``G2`` is the paper's ``G`` plus a small term
#: (random, not zero, so that the first targets already depend on the step's output target).
JOINT_GROUP = "V_y"
JOINT_INIT = "normal:0.1"
#: The SRN's inverses: the registered kinds, and ``"joint"``: the learned inverse made many-to-one
#: (it also reads the logits ``y_{t-1}`` and their target; see :func:`build_srn`).
JOINT = "joint"
OUTPUT_GROUPS = ("W_hy", "b_y")
METHODS = ("tp", "bptt")
#: Engines an :class:`SRN` keeps, one per sequence length; the least recently used is dropped beyond.
ENGINE_CACHE_SIZE = 8
INPUTS = ("index", "real")
OUTPUTS = ("softmax", "linear")


def _check_inverse_loss(inverse_loss, noise, noise_name):
    """Refuse an unknown inverse loss, and a loss that needs noise without it (it is identically 0)."""
    if inverse_loss not in known_inverse_losses():
        raise ConfigError(f"SRN: inverse_loss must be one of {tuple(known_inverse_losses())}, got {inverse_loss!r}")
    if get_inverse_loss(inverse_loss).needs_noise and not noise > 0:
        raise ConfigError(f"SRN: inverse_loss {inverse_loss!r} needs {noise_name} > 0 (got {noise!r}): without "
                          f"noise the loss is identically 0")


def srn_inverses() -> tuple:
    """The SRN's ``inverse`` choices: the registered inverse kinds and ``"joint"``."""
    return tuple(known_inverse_kinds()) + (JOINT,)


def _check_inverse(inverse, inverse_reg):
    """Refuse an unknown inverse kind and a regularisation that is not a finite number > 0."""
    if inverse not in srn_inverses():
        raise ConfigError(f"SRN: inverse must be one of {srn_inverses()}, got {inverse!r}")
    if isinstance(inverse_reg, bool) or not isinstance(inverse_reg, (int, float)) or not np.isfinite(inverse_reg) \
            or inverse_reg <= 0:
        raise ConfigError(f"SRN: inverse_reg must be a finite number > 0, got {inverse_reg!r}")


def _check_joint(credit, merge, many_to_many):
    """Refuse what the joint inverse cannot combine with (it replaces the linear merge of each step)."""
    rule = get_rule(credit, "SRN credit")
    if not (rule.needs_inverse and rule.takes_context):
        raise ConfigError(f"SRN: inverse 'joint' proposes through the inverse G2(h_t, y_(t-1)); credit {credit!r} "
                          f"does not (use dtp or tp; BPTT ignores the inverse)")
    if merge != "linear":
        raise ConfigError(f"SRN: inverse 'joint' replaces the merge at every h_t but the last (one target each, "
                          f"no merge left to change); merge {merge!r} is not possible with it, use 'linear'")
    if not many_to_many:
        raise ConfigError("SRN: inverse 'joint' reads each step's output y_(t-1); a many-to-one model has no "
                          "outputs before the last step (use inverse 'learned')")


def _is_learned(inverse):
    return inverse == JOINT or get_inverse_kind(inverse).has_params


def _check_truncate(truncate):
    if truncate is not None and (isinstance(truncate, bool) or not isinstance(truncate, (int, np.integer))
                                 or truncate < 1):
        raise ConfigError(f"SRN: truncate must be a positive int (steps per segment) or None, got {truncate!r}")


@functools.lru_cache(maxsize=256)
def _names(prefix, length, start=1):
    return tuple(f"{prefix}_{t}" for t in range(start, length + 1))


def build_srn(length: int, n_in: int, n_hidden: int, n_out: int, *, many_to_many: bool = True,
              credit: str = "dtp", noise: float = 0.0, dtype="float32", merge: str = "linear",
              reduction: str = "mean", act: str = "tanh", inverse_act: str = "tanh", inputs: str = "index",
              output: str = "softmax", inverse_loss: str = "reconstruction", truncate: int | None = None,
              inverse: str = "learned", inverse_reg: float = ANALYTIC_REG, progress=None) -> Graph:
    """Declare the SRN unrolled over ``length`` steps.

    ``credit`` is the rule of the edges back in time (``"dtp"``, ``"tp"``,
    ``"fa"`` or ``"gradient"``); use ``graph.with_rules("gradient")`` for BPTT.
    ``inputs`` is ``"index"`` (one-hot tokens by gather) or ``"real"``
    (``x_t`` real vectors); ``output`` is ``"softmax"`` (logits and
    cross-entropy against integer labels) or ``"linear"`` (a linear output
    and a squared error against real targets). ``inverse_loss`` is the
    objective of the inverse ``G`` (:class:`~tpgraph.nodes.Inverse`):
    ``"reconstruction"`` or ``"difference"`` (Meulemans et al. 2020; needs
    ``noise > 0``). ``truncate=k`` cuts the credit of the edges ``h_{t-1}
    -> h_t`` for ``t = k+1, 2k+1, ...`` (:meth:`~tpgraph.graph.Graph.cut`):
    targets (or, with ``gradient`` rules, gradients) travel back within
    segments of ``k`` steps only, truncated TP (truncated BPTT); ``None``:
    never cut. ``inverse`` is the kind of ``G`` (:mod:`tpgraph.inverses`):
    ``"learned"`` (``V_h``, ``c_h``, trained) or ``"analytic"``, the
    regularised inverse ``(W_h^T W_h + inverse_reg I)^-1 W_h^T (atanh(h_t) -
    W_xh x_t - b_h)``, which has no groups (``noise``, ``inverse_act`` and
    ``inverse_loss`` then do not apply), or ``"adjoint"``: ``V_h (h_t -
    h_t^3/3) + W_xh x_t + c_h`` (:class:`~tpgraph.inverses.AdjointInverse`,
    trained like the learned one; ``inverse_act`` does not apply, its
    Jacobian can equal ``W_h^T diag(1 - h_t^2)``), or ``"joint"``: the learned inverse
    made many-to-one (``Inverse.context``). ``h_{t-1}`` has two consumers,
    ``h_t`` and the logits ``y_{t-1}``; instead of merging their proposals
    linearly, one inverse takes both targets,

        G2(h_t, y_{t-1}) = tanh(V_h h_t + V_y y_{t-1} + W_xh x_t + c_h),
        h_hat_{t-1} = h_{t-1} + G2(h_hat_t, y_hat_{t-1}) - G2(h_t, y_{t-1})

    with ``y_hat_{t-1} = y_{t-1} - alpha dE_{t-1}/dy_{t-1}``, and the edges
    ``h_{t-1} -> y_{t-1}`` are cut (:meth:`~tpgraph.graph.Graph.cut`) wherever
    ``h_{t-1} -> h_t`` carries credit (so ``h_L``, and with ``truncate`` the
    last step of each segment, keep their step target). ``V_y [n_hidden,
    n_out]`` (init :data:`JOINT_INIT`) is trained with ``V_h, c_h``; ``G2``
    at ``h_1`` has no context (``h_0`` has no other consumer). It needs
    ``credit`` dtp or tp, the linear merge and ``many_to_many``.
    ``progress``, if given, is called as ``progress("declaring", t, length)``
    about a hundred times.
    """
    for name, v in (("length", length), ("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"SRN: {name} must be a positive int, got {v!r}")
    if inputs not in INPUTS:
        raise ConfigError(f"SRN: inputs must be one of {INPUTS}, got {inputs!r}")
    if output not in OUTPUTS:
        raise ConfigError(f"SRN: output must be one of {OUTPUTS}, got {output!r}")
    _check_inverse_loss(inverse_loss, noise, "noise")
    _check_truncate(truncate)
    _check_inverse(inverse, inverse_reg)
    joint = inverse == JOINT
    if joint:
        _check_joint(credit, merge, many_to_many)
    learned = _is_learned(inverse)
    if learned:  # the learned kinds (learned, adjoint, joint): V_h, c_h; a kind may fix the inverse's activation
        kind = "learned" if joint else inverse
        inv_opts = dict(weight="V_h", bias="c_h", act=get_inverse_kind(kind).fixed_act or inverse_act, noise=noise,
                        loss=inverse_loss, kind=kind)
    else:
        inv_opts = dict(kind=inverse, reg=float(inverse_reg))
    if joint:
        inv_opts.update(context=JOINT_GROUP, context_size=n_out)
    g = Graph(f"srn_L{length}", dtype=dtype, merge=merge)
    g.input("h_0", n_hidden)
    every = max(1, length // 100)
    for t in range(1, length + 1):
        if progress is not None and t % every == 0:
            progress("declaring", t, length)
        if inputs == "index":
            g.index_input(f"x_{t}", n_in)
        else:
            g.input(f"x_{t}", n_in)
        g.dense(f"h_{t}", [f"x_{t}", f"h_{t - 1}"], n_hidden, act=act, weights=["W_xh", "W_h"],
                bias="b_h", rules=["none", credit])
        g.add_inverse(f"h_{t}", of=f"h_{t - 1}", others="forward", **inv_opts)
        if (many_to_many or t == length) and output == "softmax":
            g.softmax_output(f"y_{t}", [f"h_{t}"], n_out, weights=["W_hy"], bias="b_y", rules=["gradient"])
            g.index_input(f"l_{t}", n_out)
            g.cross_entropy(f"E_{t}", f"y_{t}", f"l_{t}", reduction=reduction)
        elif many_to_many or t == length:
            g.dense(f"y_{t}", [f"h_{t}"], n_out, act="identity", weights=["W_hy"], bias="b_y", rules=["gradient"])
            g.input(f"l_{t}", n_out)
            g.mse(f"E_{t}", f"y_{t}", f"l_{t}", reduction=reduction)
    cut_back = set()
    if truncate is not None:
        for t in range(truncate + 1, length + 1, truncate):
            g.cut(f"h_{t - 1}", f"h_{t}")
            cut_back.add(t - 1)
    if joint:  # G2 takes y_{t-1}'s target: its own proposal to h_{t-1} is not added again
        for t in range(1, length):
            if t not in cut_back:
                g.cut(f"h_{t}", f"y_{t}")
        g.init(JOINT_GROUP, JOINT_INIT)
    for group, spec in PAPER_INIT.items():
        if learned or group not in INVERSE_GROUPS:
            g.init(group, spec)
    return g


class SRN:
    """The paper's SRN trained by target propagation (``method="tp"``) or BPTT (``"bptt"``).

    Both methods run the same generic engine on the same unrolled graph
    (BPTT with every credit edge ``gradient``, ``alpha = 1``), from the same
    seeded initialisation. Parameters are reachable by the paper's names
    (``model.params["W_h"]``), readable and writable.

    Parameters
    ----------
    n_in, n_hidden, n_out : int
        Vocabulary of the one-hot inputs (or width of real inputs), hidden
        units, output classes (or width of real outputs).
    method : {"tp", "bptt"}
    many_to_many : bool
        An output at every step (True) or only at the last.
    inputs : {"index", "real"}
        Integer tokens ``[L, B]`` (one-hot by gather) or real vectors ``[L, B, n_in]``.
    output : {"softmax", "linear"}
        Classification (logits, cross-entropy against integer labels) or
        regression (a linear output, squared error against real targets
        ``[L_out, B, n_out]``). Regression losses are reported as the mean
        squared error per output component, ``mean (y - l)^2``, twice the
        graph's ``1/2 ||y - l||^2`` per component; accuracy counts an output
        step as right when every component is within ``tolerance``.
    tolerance : float
        Regression only: the largest absolute error (exclusive) that counts
        as right (0.04: the adding problem's threshold).
    alpha : float
        Step size of the loss targets (TP; BPTT uses 1, its exact gradient).
    optimizer : str
        ``"adam"`` (the authors' choice), ``"sgd"``, ``"momentum"``, ``"nesterov"``.
    lr_f, lr_g, lr_y : float
        Learning rates of the forward (``W_xh, W_h, b_h``), inverse
        (``V_h, c_h``) and output (``W_hy, b_y``) groups. The output layer
        follows the gradient of the cross-entropy itself (its local gradient
        is divided by ``alpha``).
    noise_sigma : float
        Gaussian noise on ``h_{t-1}`` when training the inverse (0: none).
    inverse_loss : {"reconstruction", "difference"}
        The inverse's objective: ``1/2 ||G(F(h + eps)) - (h + eps)||^2`` or
        the difference reconstruction loss ``1/2 ||G(F(h + eps)) - G(F(h)) -
        eps||^2`` (Meulemans et al. 2020; needs ``noise_sigma > 0``), both
        with ``x_t`` at its value and ``eps ~ N(0, noise_sigma^2 I)``.
    truncate : int, optional
        Cut the credit back in time every ``truncate`` steps (truncated TP,
        or truncated BPTT with ``method="bptt"``; see :func:`build_srn`).
    merge : str
        Merge strategy of the targets (``"linear"``: Eq. 22).
    credit : str
        TP's rule back in time: ``"dtp"`` (Eq. 19), ``"tp"`` (Eq. 11), or
        ``"fa"`` (feedback alignment: a fixed random matrix in place of
        ``W_h^T``; the inverse is then neither used nor trained). Any
        registered rule that carries credit and suits a dense node is accepted.
    inverse : {"learned", "analytic", "adjoint", "adjoint_clamped", "joint"}
        The kind of the inverse ``G`` (:mod:`tpgraph.inverses`): learned
        (``V_h``, ``c_h``, trained with ``lr_g`` after a warm-up) or the
        analytic regularised inverse of the tanh layer (Roulet & Harchaoui),
        ``(W_h^T W_h + inverse_reg I)^-1 W_h^T (atanh(h_t) - W_xh x_t - b_h)``
        from the live ``W_h``: no groups, no training, no warm-up. The forward
        groups start as the learned model's of the same seed. ``"joint"``:
        the learned inverse made many-to-one, ``G2(h_t, y_{t-1})``, which takes
        the targets of ``h_t`` and of the logits ``y_{t-1}`` at once in place
        of the linear merge (see :func:`build_srn`); its extra group ``V_y``
        is trained with ``lr_g``; the other groups start as the learned
        model's of the same seed. BPTT ignores it. ``"adjoint"``: ``G(x_t,
        h_t) = V_h (h_t - h_t^3/3) + W_xh x_t + c_h``, trained like the
        learned one (same groups and initialisation), whose Jacobian
        ``V_h diag(1 - h_t^2)`` can equal the step's transpose; meant for
        ``inverse_loss="jacobian"`` (:class:`~tpgraph.inverses.AdjointInverse`);
        ``"adjoint_clamped"`` the same with ``h_t`` clipped into ``[-1, 1]``
        inside the features (:class:`~tpgraph.inverses.ClampedAdjointInverse`).
    inverse_reg : float
        The analytic inverse's regularisation ``reg > 0`` (ignored by the learned one).
    memory_limit : int or str, optional
        The most memory an engine (graph, plan and buffers) may take, e.g.
        ``"8G"``; ``"off"`` for no check. Default: ``$TPGRAPH_MEMORY_LIMIT``
        or the memory available (see :mod:`tpgraph.memory`). A length and
        batch size that would exceed it are refused before anything is
        built (:meth:`estimate_memory`, :class:`~tpgraph.errors.MemoryLimitError`).
    cache_size : int
        Engines kept, one per sequence length (:data:`ENGINE_CACHE_SIZE`); the
        least recently used is dropped when a new length comes, so training on
        many lengths does not grow memory without bound.
    """

    def __init__(self, n_in: int, n_hidden: int, n_out: int, *, method: str = "tp", many_to_many: bool = True,
                 dtype="float32", seed: int = 0, alpha: float = 0.1, optimizer: str = "adam",
                 lr_f: float = 1e-3, lr_g: float = 1e-3, lr_y: float = 1e-3, noise_sigma: float = 0.0,
                 merge: str = "linear", credit: str = "dtp", reduction: str = "mean", fast_tanh: bool = True,
                 optimizer_options: dict | None = None, inputs: str = "index", output: str = "softmax",
                 tolerance: float = 0.04, memory_limit: int | str | None = None,
                 cache_size: int = ENGINE_CACHE_SIZE, inverse_loss: str = "reconstruction",
                 truncate: int | None = None, inverse: str = "learned", inverse_reg: float = ANALYTIC_REG):
        if method not in METHODS:
            raise ConfigError(f"SRN: method must be one of {METHODS}, got {method!r}")
        try:
            rule = get_rule(credit, "SRN credit")
        except GraphError as exc:
            raise ConfigError(str(exc)) from None
        if not rule.carries_credit:
            raise ConfigError(f"SRN: credit {credit!r} carries no credit back in time; choose dtp, tp or fa")
        if not (isinstance(noise_sigma, (int, float)) and np.isfinite(noise_sigma) and noise_sigma >= 0):
            raise ConfigError(f"SRN: noise_sigma must be a finite number >= 0, got {noise_sigma!r}")
        _check_inverse_loss(inverse_loss, noise_sigma, "noise_sigma")
        self.inverse_loss = inverse_loss
        _check_truncate(truncate)
        self.truncate = None if truncate is None else int(truncate)
        _check_inverse(inverse, inverse_reg)
        self.inverse, self.inverse_reg = inverse, float(inverse_reg)
        if inverse == JOINT and method == "bptt":
            inverse = "learned"  # BPTT ignores the inverse: the plain graph, the same forward initialisation
        if inverse == JOINT:
            _check_joint(credit, merge, many_to_many)
        learned = _is_learned(inverse)
        #: Whether training updates an inverse (TP with a rule through the inverse, and a learned one).
        self.trains_inverse = method == "tp" and rule.needs_inverse and learned
        if isinstance(tolerance, bool) or not (isinstance(tolerance, (int, float)) and np.isfinite(tolerance)
                                                and tolerance > 0):
            raise ConfigError(f"SRN: tolerance must be a finite number > 0, got {tolerance!r}")
        self.n_in, self.n_hidden, self.n_out = n_in, n_hidden, n_out
        self.inputs, self.output, self.tolerance = inputs, output, float(tolerance)
        self.method = method
        self.many_to_many = many_to_many
        self.dtype = np.dtype(dtype)
        self.seed = seed
        self.alpha = alpha if method == "tp" else 1.0
        self._graph_opts = dict(n_in=n_in, n_hidden=n_hidden, n_out=n_out, many_to_many=many_to_many,
                                credit=credit, noise=noise_sigma, dtype=self.dtype, merge=merge,
                                reduction=reduction, inputs=inputs, output=output, inverse_loss=inverse_loss,
                                truncate=self.truncate, inverse=inverse, inverse_reg=self.inverse_reg)
        groups = {g: {"lr": lr_f} for g in FORWARD_GROUPS}
        if learned:  # an analytic inverse has no groups
            groups.update({g: {"lr": lr_g} for g in INVERSE_GROUPS})
        if inverse == JOINT:
            groups[JOINT_GROUP] = {"lr": lr_g}
        groups.update({g: {"lr": lr_y, "scale": 1.0 / self.alpha} for g in OUTPUT_GROUPS})
        self._engine_opts = dict(alpha=self.alpha, optimizer=optimizer, lr=lr_f, groups=groups,
                                 fast_tanh=fast_tanh, optimizer_options=optimizer_options, seed=seed)
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ConfigError(f"SRN: cache_size must be an int >= 1, got {cache_size!r}")
        if memory_limit is not None:
            parse_bytes(memory_limit, "SRN memory_limit")
        self.memory_limit, self.cache_size = memory_limit, cache_size
        self._engine_opts["memory_limit"] = memory_limit
        self._engines: OrderedDict[int, Engine] = OrderedDict()  # by length, least recently used first
        self._probes: dict[int, Plan] = {}  # plans of lengths 1-3, for memory estimates
        self._reference_engines: dict[int, Engine] = {}  # BPTT twins for alignment, per length
        self._h0: dict[int, np.ndarray] = {}  # the zero initial state, per batch size
        #: The engine of the last :meth:`train_step` (its buffers hold that step's losses), or None.
        self.last_trained: Engine | None = None
        first = self.graph(1)  # validates the options, fixes the parameter groups
        if inverse == JOINT:  # the learned SRN's groups of this seed (V_y, drawn first in sorted order, apart)
            twin = build_srn(1, **dict(self._graph_opts, inverse="learned")).init_params(seed)
            own = first.init_params(seed)
            self.params = ParamStore({k: twin[k] if k in twin else own[k] for k in first.param_shapes()},
                                     self.dtype)
        elif learned:
            self.params = first.init_params(seed)
        else:  # the same forward initialisation as the learned inverse's SRN of this seed, without V_h, c_h
            twin = build_srn(1, **dict(self._graph_opts, inverse="learned")).init_params(seed)
            self.params = ParamStore({k: twin[k] for k in first.param_shapes()}, self.dtype)
        self._first: Engine | None = None  # holds what every length shares (made with the first engine)

    def __repr__(self):
        kinds = "" if (self.inputs, self.output) == ("index", "softmax") else \
            f", inputs={self.inputs!r}, output={self.output!r}"
        return (f"SRN(n_in={self.n_in}, n_hidden={self.n_hidden}, n_out={self.n_out}, method={self.method!r}{kinds}, "
                f"dtype={self.dtype.name})")

    # ------------------------------------------------------------------ graphs and engines
    def graph(self, length: int, progress=None) -> Graph:
        """The unrolled graph of this model for sequences of ``length`` (TP or BPTT rules).

        BPTT's graph is declared with ``gradient`` edges back in time: the same
        graph as ``build_srn(...).with_rules("gradient")``, without the copy.
        """
        opts = dict(self._graph_opts, credit="gradient") if self.method == "bptt" else self._graph_opts
        return build_srn(length, progress=progress, **opts)

    def engine(self, length: int, batch_size: int | None = None, progress=None) -> Engine:
        """The engine for ``length``: compiled once, then cached (least recently used dropped).

        All lengths share parameters, optimisers and the noise generator.
        Before building a new one, :meth:`estimate_memory` (with
        ``batch_size`` when given, else the graph alone) is checked against
        the memory limit, so a length that cannot fit is refused at once.
        ``progress(stage, done, total)``, if given, follows the declaration
        (``"declaring"``) and the compilation (``"compiling"``).
        """
        eng = self._engines.get(length)
        if eng is not None:
            self._engines.move_to_end(length)
            return eng
        self._check_memory(length, batch_size)
        if self._first is None:  # a small engine owns the shared state, whichever lengths come and go
            self._first = Engine(self.graph(1), self.params, **self._engine_opts)
        with paused_gc():  # see paused_gc: a fifth of a long build's time otherwise
            eng = Engine(self.graph(length, progress), self.params, progress=progress, **self._engine_opts)
        eng.optimizers = self._first.optimizers
        eng.rng = self._first.rng
        eng.feedback = self._first.feedback
        self._engines[length] = eng
        while len(self._engines) > self.cache_size:
            old, _ = self._engines.popitem(last=False)
            self._reference_engines.pop(old, None)
        return eng

    def estimate_memory(self, length: int, batch_size: int | None = None) -> MemoryEstimate:
        """What the engine for ``length`` and its first batch of ``batch_size`` will allocate, before building it.

        The graph and plan (``structure``: nodes times
        :data:`~tpgraph.memory.STRUCTURE_BYTES_PER_NODE`) and the buffers of
        the batch size (``buffers``, by dtype; none without ``batch_size``).
        Every stack of the unrolled SRN has one member per step or one in
        all, so both are affine in the length: they are computed exactly on
        the compiled graphs of lengths 2 and 3 (kept) and extrapolated, which
        costs microseconds at any length.

        Examples
        --------
        >>> from tpgraph import SRN
        >>> est = SRN(10, 128, 10).estimate_memory(10**7, 20)
        >>> est.total > 10**12   # a terabyte: refused at once, never built
        True
        """
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise ConfigError(f"SRN: length must be a positive int, got {length!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                       or batch_size < 1):
            raise ConfigError(f"SRN: batch size must be a positive int, got {batch_size!r}")
        length = int(length)
        lengths = (length,) if length <= 3 else (2, 3)
        for L in lengths:
            if L not in self._probes:
                self._probes[L] = compile_plan(self.graph(L))
        ests = []
        for L in lengths:
            plan = self._probes[L]
            buffers = plan_memory(plan, int(batch_size)).buffers if batch_size is not None else {}
            ests.append(MemoryEstimate(buffers, len(plan.where) * STRUCTURE_BYTES_PER_NODE))
        if length <= 3:
            return ests[0]
        a, b = ests
        k = length - 2
        return MemoryEstimate({d: a.buffers.get(d, 0) + k * (b.buffers.get(d, 0) - a.buffers.get(d, 0))
                               for d in b.buffers}, a.structure + k * (b.structure - a.structure))

    def _check_memory(self, length, batch_size):
        batch = f", batch size {batch_size}" if batch_size is not None else ""
        check_memory(self.estimate_memory(length, batch_size), f"the SRN ({self.method}) at length {length}{batch}",
                     self.memory_limit, hint="Use shorter sequences or a smaller batch.")

    def _batch(self, inputs, labels):
        inputs = np.asarray(inputs)
        real = self.inputs == "real"
        if (inputs.ndim != 3 or inputs.shape[2] != self.n_in) if real else inputs.ndim != 2:
            want = f"time-major reals [L, B, {self.n_in}]" if real else "time-major integers [L, B]"
            raise DataError(f"inputs must be {want}, got shape {inputs.shape}")
        L, B = inputs.shape[:2]
        h0 = self._h0.get(B)
        if h0 is None:
            h0 = self._h0[B] = np.zeros((1, B, self.n_hidden), dtype=self.dtype)
        batch = {("h_0",): h0, _names("x", L): inputs}
        if labels is not None:
            labels = np.asarray(labels)
            extra = (self.n_out,) if self.output == "linear" else ()
            # many-to-one: labels of the last step only ([1, B] or [B]) or of every step (the last is used)
            allowed = [(L, B) + extra] if self.many_to_many else [(1, B) + extra, (B,) + extra, (L, B) + extra]
            if labels.shape not in allowed:
                raise DataError(f"labels must have shape {list(allowed[0])} to match inputs {list(inputs.shape)}, "
                                f"got {list(labels.shape)}")
            if not self.many_to_many:
                labels = labels[-1:] if labels.ndim == 2 + len(extra) else labels[None]
                batch[(f"l_{L}",)] = labels
            else:
                batch[_names("l", L)] = labels
        return L, batch

    # ------------------------------------------------------------------ training
    def train_step(self, inputs, labels, *, update_forward: bool = True, update_inverse: bool = True) -> float:
        """One step on a batch (time-major ``[L, B]`` integers or ``[L, B, n_in]`` reals).

        Returns the mean per-step loss: the cross-entropy, or for a linear
        output the mean squared error per output component.
        """
        L, batch = self._batch(inputs, labels)
        eng = self.engine(L)
        res = eng.step(batch, update_forward=update_forward, update_inverse=update_inverse and self.method == "tp")
        self.last_trained = eng
        return res.loss * self._loss_factor(L)

    def alignment(self, inputs, labels):
        """Angles between this model's credit assignment on a batch and BPTT's gradient of it.

        See :func:`tpgraph.alignment.alignment`: per parameter group (``.groups``)
        and per node (``.nodes``; ``.nodes_with_prefix("h_")`` per time step).
        Changes no parameter, optimiser state or random generator, so a
        training run gives the same result with or without measuring. The
        BPTT engine of each length is built once and kept.
        """
        from ..alignment import alignment, reference_engine

        L, batch = self._batch(inputs, labels)
        eng = self.engine(L)
        ref = self._reference_engines.get(L)
        if ref is None or ref.params is not eng.params:
            ref = self._reference_engines[L] = reference_engine(eng)
        return alignment(eng, batch, ref)

    def _n_outputs(self, L):
        return L if self.many_to_many else 1

    def _loss_factor(self, L):
        """From the engine's total loss to the reported per-step loss (MSE per component for regression)."""
        if self.output == "linear":
            return 2.0 / (self._n_outputs(L) * self.n_out)
        return 1.0 / self._n_outputs(L)

    def predict_logits(self, inputs) -> np.ndarray:
        """Outputs ``[L_out, B, n_out]`` of a forward pass (``L_out`` = L, or 1 for many-to-one).

        Logits for a softmax output, the predictions themselves for a linear one.
        A fresh array (not a view of the engine's buffers, which the next pass reuses).
        """
        inputs = np.asarray(inputs)
        L, B = inputs.shape[:2]
        eng = self.engine(L)
        eng.feed(self._batch(inputs, None)[1] | self._dummy_labels(L, B))
        eng.forward()
        names = _names("y", L) if self.many_to_many else (f"y_{L}",)
        return np.array(eng.stacked_values(names))

    predict = predict_logits

    def _dummy_labels(self, L, B):
        n = self._n_outputs(L)
        shape, dtype = ((n, B, self.n_out), self.dtype) if self.output == "linear" else ((n, B), np.int64)
        names = _names("l", L) if self.many_to_many else (f"l_{L}",)
        return {names: np.zeros(shape, dtype=dtype)}

    def evaluate(self, inputs, labels, *, per_position: bool = False) -> dict:
        """Loss and accuracies on batches ``[n_batches, L, B]`` (or one batch ``[L, B]``).

        Real inputs carry one more axis (``[..., n_in]``), regression targets
        too (``[..., n_out]``). Returns ``loss`` (the mean per-step
        cross-entropy, or mean squared error per component), ``step_acc``
        (fraction of output steps right: the class, or every component within
        ``tolerance``) and ``seq_acc`` (fraction of sequences right at every
        output step). A many-to-one model has one output step, so the two
        accuracies are equal. With ``per_position``, also ``position_acc``:
        for each output step, the fraction of sequences right there (where
        along the sequence a model fails).
        """
        inputs = np.asarray(inputs)
        labels = np.asarray(labels)
        one = 2 + (self.inputs == "real")
        if inputs.ndim == one:
            inputs, labels = inputs[None], labels[None]
        n, L, B = inputs.shape[:3]
        eng = self.engine(L)
        names = _names("y", L) if self.many_to_many else (f"y_{L}",)
        m = len(names)
        total = step_acc = seq_acc = 0.0
        position = np.zeros(m, dtype=np.float64)
        pred = np.zeros(m * B, dtype=np.int64)
        for i in range(n):
            _, batch = self._batch(inputs[i], labels[i])
            total += eng.forward(batch).loss
            z = eng.stacked_values(names)
            lab = np.asarray(next(v for k, v in batch.items() if k[0].startswith("l_")))
            if self.output == "linear":
                hits = within_tolerance(z, lab.reshape(m, B, self.n_out), self.tolerance)
                right = np.ones_like(hits)
                step_acc += step_accuracy(hits, right)
                seq_acc += sequence_accuracy(hits, right)
                if per_position:
                    position += hits.reshape(m, B).mean(axis=1)
            else:
                argmax_rows(z.reshape(-1, z.shape[-1]), pred)
                lab = lab.reshape(m, B)
                step_acc += step_accuracy(pred.reshape(m, B), lab)
                seq_acc += sequence_accuracy(pred.reshape(m, B), lab)
                if per_position:
                    position += (pred.reshape(m, B) == lab).mean(axis=1)
        out = {"loss": total * self._loss_factor(L) / n, "step_acc": step_acc / n, "seq_acc": seq_acc / n}
        if per_position:
            out["position_acc"] = (position / n).tolist()
        return out

    def reconstruction_loss(self) -> float:
        """The inverse's reconstruction loss per sample at the last TP step (NaN before any)."""
        eng = self.last_trained
        if eng is not None and eng.buf is not None:
            rec = eng.reconstruction_losses()
            if rec:
                return float(sum(rec.values())) / eng.buf.B
        return float("nan")

    def spectral_radius(self, group: str = "W_h") -> float:
        """Largest eigenvalue magnitude of a square parameter (``W_h`` or ``V_h``).

        NaN for ``V_h`` when the model has none (the analytic inverse).
        """
        if group in INVERSE_GROUPS and group not in self.params:
            return float("nan")
        return float(np.max(np.abs(np.linalg.eigvals(self.params[group].astype(np.float64)))))

    def optimizer_state(self) -> dict:
        """Per-group optimiser states (empty before the first step; all lengths share them)."""
        if self._first is None:
            return {}
        return {g: opt.state_dict() for g, opt in self._first.optimizers.items()}
