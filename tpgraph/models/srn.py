"""The paper's simple recurrent network, unrolled into a tpgraph graph (Eqs. 13-17).

Per time step ``t = 1..L``: data ``x_t`` (integer symbols, one-hot by gather),
``h_t = tanh(W_xh x_t + W_h h_{t-1} + b_h)`` with a ``dtp`` edge back to
``h_{t-1}`` through the step-wise inverse ``G(x_t, h_t) = tanh(V_h h_t +
W_xh x_t + c_h)`` (which uses ``W_xh`` without training it), logits
``y_t = W_hy h_t + b_y`` with a ``gradient`` edge back to ``h_t``, and a
cross-entropy ``E_t`` against labels ``l_t``. ``h_0`` is a data input held at
zero. Many-to-one keeps only ``y_L``, ``l_L``, ``E_L``.

Nothing here is special-cased in the engine: :func:`build_srn` only declares
a graph; :class:`SRN` compiles it once per sequence length and trains it.
"""

from __future__ import annotations

import functools

import numpy as np

from ..engine import Engine
from ..errors import ConfigError, DataError, GraphError
from ..graph import Graph
from ..kernels.losses import argmax_rows
from ..rules import get_rule
from ..tasks.base import sequence_accuracy, step_accuracy

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
OUTPUT_GROUPS = ("W_hy", "b_y")
METHODS = ("tp", "bptt")


@functools.lru_cache(maxsize=256)
def _names(prefix, length, start=1):
    return tuple(f"{prefix}_{t}" for t in range(start, length + 1))


def build_srn(length: int, n_in: int, n_hidden: int, n_out: int, *, many_to_many: bool = True,
              credit: str = "dtp", noise: float = 0.0, dtype="float32", merge: str = "linear",
              reduction: str = "mean", act: str = "tanh", inverse_act: str = "tanh") -> Graph:
    """Declare the SRN unrolled over ``length`` steps.

    ``credit`` is the rule of the edges back in time (``"dtp"``, ``"tp"``,
    ``"fa"`` or ``"gradient"``); use ``graph.with_rules("gradient")`` for BPTT.
    """
    for name, v in (("length", length), ("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"SRN: {name} must be a positive int, got {v!r}")
    g = Graph(f"srn_L{length}", dtype=dtype, merge=merge)
    g.input("h_0", n_hidden)
    for t in range(1, length + 1):
        g.index_input(f"x_{t}", n_in)
        g.dense(f"h_{t}", [f"x_{t}", f"h_{t - 1}"], n_hidden, act=act, weights=["W_xh", "W_h"],
                bias="b_h", rules=["none", credit])
        g.add_inverse(f"h_{t}", of=f"h_{t - 1}", weight="V_h", bias="c_h", act=inverse_act,
                      others="forward", noise=noise)
        if many_to_many or t == length:
            g.softmax_output(f"y_{t}", [f"h_{t}"], n_out, weights=["W_hy"], bias="b_y", rules=["gradient"])
            g.index_input(f"l_{t}", n_out)
            g.cross_entropy(f"E_{t}", f"y_{t}", f"l_{t}", reduction=reduction)
    for group, spec in PAPER_INIT.items():
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
        Vocabulary of the one-hot inputs, hidden units, output classes.
    method : {"tp", "bptt"}
    many_to_many : bool
        An output at every step (True) or only at the last.
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
    merge : str
        Merge strategy of the targets (``"linear"``: Eq. 22).
    credit : str
        TP's rule back in time: ``"dtp"`` (Eq. 19), ``"tp"`` (Eq. 11), or
        ``"fa"`` (feedback alignment: a fixed random matrix in place of
        ``W_h^T``; the inverse is then neither used nor trained). Any
        registered rule that carries credit and suits a dense node is accepted.
    """

    def __init__(self, n_in: int, n_hidden: int, n_out: int, *, method: str = "tp", many_to_many: bool = True,
                 dtype="float32", seed: int = 0, alpha: float = 0.1, optimizer: str = "adam",
                 lr_f: float = 1e-3, lr_g: float = 1e-3, lr_y: float = 1e-3, noise_sigma: float = 0.0,
                 merge: str = "linear", credit: str = "dtp", reduction: str = "mean", fast_tanh: bool = True,
                 optimizer_options: dict | None = None):
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
        self.n_in, self.n_hidden, self.n_out = n_in, n_hidden, n_out
        self.method = method
        self.many_to_many = many_to_many
        self.dtype = np.dtype(dtype)
        self.seed = seed
        self.alpha = alpha if method == "tp" else 1.0
        self._graph_opts = dict(n_in=n_in, n_hidden=n_hidden, n_out=n_out, many_to_many=many_to_many,
                                credit=credit, noise=noise_sigma, dtype=self.dtype, merge=merge,
                                reduction=reduction)
        groups = {g: {"lr": lr_f} for g in FORWARD_GROUPS}
        groups.update({g: {"lr": lr_g} for g in INVERSE_GROUPS})
        groups.update({g: {"lr": lr_y, "scale": 1.0 / self.alpha} for g in OUTPUT_GROUPS})
        self._engine_opts = dict(alpha=self.alpha, optimizer=optimizer, lr=lr_f, groups=groups,
                                 fast_tanh=fast_tanh, optimizer_options=optimizer_options, seed=seed)
        self._engines: dict[int, Engine] = {}
        self._h0: dict[int, np.ndarray] = {}  # the zero initial state, per batch size
        first = self.graph(1)  # validates the options, fixes the parameter groups
        self.params = first.init_params(seed)
        self._first: Engine | None = None

    def __repr__(self):
        return (f"SRN(n_in={self.n_in}, n_hidden={self.n_hidden}, n_out={self.n_out}, method={self.method!r}, "
                f"dtype={self.dtype.name})")

    # ------------------------------------------------------------------ graphs and engines
    def graph(self, length: int) -> Graph:
        """The unrolled graph of this model for sequences of ``length`` (TP or BPTT rules)."""
        g = build_srn(length, **self._graph_opts)
        return g.with_rules("gradient") if self.method == "bptt" else g

    def engine(self, length: int) -> Engine:
        """The engine for ``length`` (compiled once, cached); all lengths share parameters and optimisers."""
        eng = self._engines.get(length)
        if eng is None:
            eng = Engine(self.graph(length), self.params, **self._engine_opts)
            if self._first is None:
                self._first = eng
            else:
                eng.optimizers = self._first.optimizers
                eng.rng = self._first.rng
                eng.feedback = self._first.feedback
            self._engines[length] = eng
        return eng

    def _batch(self, inputs, labels):
        inputs = np.asarray(inputs)
        if inputs.ndim != 2:
            raise DataError(f"inputs must be time-major integers [L, B], got shape {inputs.shape}")
        L, B = inputs.shape
        h0 = self._h0.get(B)
        if h0 is None:
            h0 = self._h0[B] = np.zeros((1, B, self.n_hidden), dtype=self.dtype)
        batch = {("h_0",): h0, _names("x", L): inputs}
        if labels is not None:
            labels = np.asarray(labels)
            want = (L, B) if self.many_to_many else (B,)
            if labels.shape not in (want, (L, B)):
                raise DataError(f"labels must have shape {list(want)} to match inputs {list(inputs.shape)}, "
                                f"got {list(labels.shape)}")
            if not self.many_to_many:
                labels = labels[-1:] if labels.ndim == 2 else labels[None]
                batch[(f"l_{L}",)] = labels
            else:
                batch[_names("l", L)] = labels
        return L, batch

    # ------------------------------------------------------------------ training
    def train_step(self, inputs, labels, *, update_forward: bool = True, update_inverse: bool = True) -> float:
        """One step on a batch (time-major ``[L, B]`` integers); returns the mean per-step loss."""
        L, batch = self._batch(inputs, labels)
        eng = self.engine(L)
        res = eng.step(batch, update_forward=update_forward, update_inverse=update_inverse and self.method == "tp")
        return res.loss / self._n_outputs(L)

    def _n_outputs(self, L):
        return L if self.many_to_many else 1

    def predict_logits(self, inputs) -> np.ndarray:
        """Logits ``[L_out, B, n_out]`` of a forward pass (``L_out`` = L, or 1 for many-to-one)."""
        L = np.asarray(inputs).shape[0]
        eng = self.engine(L)
        eng.feed(self._batch(inputs, None)[1] | self._dummy_labels(L, np.asarray(inputs).shape[1]))
        eng.forward()
        names = _names("y", L) if self.many_to_many else (f"y_{L}",)
        return eng.stacked_values(names)

    def _dummy_labels(self, L, B):
        if self.many_to_many:
            return {_names("l", L): np.zeros((L, B), dtype=np.int64)}
        return {(f"l_{L}",): np.zeros((1, B), dtype=np.int64)}

    def evaluate(self, inputs, labels) -> dict:
        """Loss and accuracies on batches ``[n_batches, L, B]`` (or one batch ``[L, B]``).

        Returns ``loss`` (mean per-step cross-entropy), ``step_acc`` (fraction
        of positions right) and ``seq_acc`` (fraction of sequences right at
        every position).
        """
        inputs = np.asarray(inputs)
        labels = np.asarray(labels)
        if inputs.ndim == 2:
            inputs, labels = inputs[None], labels[None]
        n, L, B = inputs.shape
        eng = self.engine(L)
        names = _names("y", L) if self.many_to_many else (f"y_{L}",)
        total = step_acc = seq_acc = 0.0
        pred = np.zeros(len(names) * B, dtype=np.int64)
        for i in range(n):
            _, batch = self._batch(inputs[i], labels[i])
            total += eng.forward(batch).loss
            z = eng.stacked_values(names)
            argmax_rows(z.reshape(-1, z.shape[-1]), pred)
            lab = (labels[i] if self.many_to_many else labels[i][-1:]).reshape(len(names), B)
            step_acc += step_accuracy(pred.reshape(len(names), B), lab)
            seq_acc += sequence_accuracy(pred.reshape(len(names), B), lab)
        return {"loss": total / (n * self._n_outputs(L)), "step_acc": step_acc / n, "seq_acc": seq_acc / n}

    def reconstruction_loss(self) -> float:
        """The inverse's reconstruction loss per sample at the last TP step (NaN before any)."""
        for eng in self._engines.values():
            if eng.buf is not None:
                rec = eng.reconstruction_losses()
                if rec:
                    return float(sum(rec.values())) / eng.buf.B
        return float("nan")

    def spectral_radius(self, group: str = "W_h") -> float:
        """Largest eigenvalue magnitude of a square parameter (``W_h`` or ``V_h``)."""
        return float(np.max(np.abs(np.linalg.eigvals(self.params[group].astype(np.float64)))))

    def optimizer_state(self) -> dict:
        """Per-group optimiser states (empty before the first step; all lengths share them)."""
        if self._first is None:
            return {}
        return {g: opt.state_dict() for g, opt in self._first.optimizers.items()}
