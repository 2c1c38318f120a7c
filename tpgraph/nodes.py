"""Node kinds of a tpgraph computation graph.

A node is a small typed object: its name, the names of its inputs, the credit
rule of each input edge (chosen by this node, the consumer), and its own
settings. The mathematics of each kind (forward, local vector-Jacobian
product, parameter gradient, inverse) lives in :mod:`tpgraph.kinds`; this
module only declares.

Credit rules (per input edge ``u -> v``):

``"dtp"``
    ``tau = h_u + g(h_hat_v) - g(h_v)`` (difference target propagation);
``"tp"``
    ``tau = g(h_hat_v)``;
``"gradient"``
    ``tau = h_u + J_u^T (h_hat_v - h_v)`` (one node's Jacobian, no chain rule);
``"fa"``
    ``tau = h_u + B^T (f'(a_v) * (h_hat_v - h_v))``, a fixed random ``B`` for ``W``;
``"none"``
    no credit flows.

Rules are objects of one registry (:mod:`tpgraph.rules`); a node stores
their names. ``g`` is the node's learned inverse with respect to that input (see
:class:`Inverse`). Edges out of data inputs carry no credit whatever their rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import GraphError
from .inverse_losses import get_inverse_loss, known_inverse_losses
from .inverses import ANALYTIC_CLIP, ANALYTIC_REG, get_inverse_kind
from .kernels.activations import ACTIVATIONS
from .rules import get_rule
REDUCTIONS = ("mean", "sum")
#: Objectives that train a learned inverse (see :class:`Inverse`; the built-in losses of
#: :mod:`tpgraph.inverse_losses`, at import).
INVERSE_LOSSES = tuple(known_inverse_losses())
#: The inverse losses that are identically 0 (or undefined) without noise.
NOISY_LOSSES = tuple(name for name in INVERSE_LOSSES if get_inverse_loss(name).needs_noise)


def _check_name(name, what):
    if not isinstance(name, str) or not name:
        raise GraphError(f"{what} must be a non-empty string, got {name!r}")


def _check_size(size, node):
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise GraphError(f"node {node!r}: size must be a positive int, got {size!r}")


def _check_number(value, node, what, positive=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and abs(value) != float("inf") and (value > 0 if positive else True)
    if not ok:
        need = "a finite number > 0" if positive else "a finite number"
        raise GraphError(f"node {node!r}: {what} must be {need}, got {value!r}")


def _check_act(act, node):
    if act not in ACTIVATIONS:
        raise GraphError(
            f"node {node!r}: unknown activation {act!r}; known: {', '.join(ACTIVATIONS)}"
        )


@dataclass(repr=False)
class Inverse:
    """A learned approximate inverse ``g`` of a dense node with respect to one input.

    ``g(h_v; others) = act(V h_v + sum_{i != j} W_i h_i + c)``: ``weight`` (``V``)
    and ``bias`` (``c``) are the inverse's own parameter groups, trained to
    reconstruct the input from the node's output (a denoising auto-encoder
    with Gaussian noise ``noise`` on the input). With ``others="forward"`` the
    node's other inputs enter through the node's *forward* weights, used but
    not trained by the inverse (the paper's ``G(x_t, h_t)`` uses ``W_xh``);
    with ``others="none"`` they are left out.

    ``loss`` is the objective that trains ``g`` (:data:`INVERSE_LOSSES`), with
    ``eps ~ N(0, noise^2 I)``:

    ``"reconstruction"`` (the default)
        ``1/2 ||g(f(h_u + eps)) - (h_u + eps)||^2`` (Lee et al. 2015);
    ``"difference"``
        the difference reconstruction loss of Meulemans et al. (2020),
        ``1/2 ||g(f(h_u + eps)) - g(f(h_u)) - eps||^2``: the
        difference-corrected inverse that ``dtp`` uses,
        ``h_u + g(h_hat) - g(h)``, should give back the perturbed input. Its
        gradient flows through both ``g`` terms (no stop-gradient on
        ``g(f(h_u))``). It needs ``noise > 0`` (with no noise it is 0).
    ``"jacobian"``
        the Jacobian-matching loss of Ernoult et al. (2022, "learning
        backprop targets"), with a second draw ``eta ~ N(0, noise^2 I)`` at
        ``h_v``: ``[-eps . (g(f(h_u + eps)) - g(f(h_u))) + 1/2 ||g(h_v +
        eta) - g(h_v)||^2] / noise^2``. For small noise its expectation is
        ``-tr(J_g J_f) + 1/2 ||J_g||_F^2 = 1/2 ||J_g - J_f^T||_F^2 - 1/2
        ||J_f||_F^2``, least where ``g``'s Jacobian is the *transpose* of
        ``f``'s, not its inverse: ``dtp``'s ``h_u + g(h_hat_v) - g(h_v)`` then
        moves ``h_u`` by ``J_f^T (h_hat_v - h_v)``, the chain rule's step,
        and target propagation approaches backpropagation. The gradient flows
        through every ``g`` term. Its value can be negative (the reported
        loss is this objective). It needs ``noise > 0``.

    All are summed over the batch.

    ``kind`` names how ``g`` is made (an inverse kind of
    :mod:`tpgraph.inverses`): ``"learned"`` (the default, all of the above)
    or ``"analytic"``, the regularised inverse of a tanh node (Roulet &
    Harchaoui) ``g(h) = (W_u^T W_u + reg I)^-1 W_u^T (atanh(clip(h)) - sum_{i
    != u} W_i h_i - b)``, with the argument of atanh clipped into ``[-1 +
    clip, 1 - clip]``; it has no ``weight``, ``bias`` or ``noise`` and is not
    trained (``reg`` and ``clip`` are its options only).

    ``context`` (learned kind only; default None) makes ``g`` a *many-to-one*
    inverse (a "joint" inverse): the inverted input ``u`` may have one other
    consumer ``s`` (its *sibling*, a dense node ``h_s = act_s(W_s h_u + ... +
    b_s)``), and ``g`` then reads the sibling's value too, through its own
    parameter group ``context`` (``V_s``, shape ``[n_u, n_s]``):

        g(h_v, h_s) = act(V h_v + V_s h_s + sum_{i != u} W_i h_i + c)

    At the targets it takes both consumers' targets at once: ``dtp`` proposes
    ``tau = h_u + g(h_hat_v, h_hat_s) - g(h_v, h_s)``, ``tp`` ``g(h_hat_v,
    h_hat_s)``. It is meant to *replace* the merge at ``u``: the declaration
    cuts the sibling's own edge ``u -> s`` (:meth:`~tpgraph.graph.Graph.cut`)
    so that its proposal is not added a second time. ``V_s`` is trained with
    ``V`` and ``c`` by the same objective, now many-to-one: reconstruct ``h_u +
    eps`` from ``(f_v(h_u + eps), f_s(h_u + eps))`` (the sibling's other inputs
    at their forward values). Where ``u`` has no other consumer (the first
    step of an unrolled RNN) the context contributes zero. ``context_size``
    is ``n_s``, needed only when no node of the graph has a sibling to take it
    from (a graph of one step).
    """

    of: str
    weight: str | None = None
    bias: str | None = None
    act: str = "tanh"
    others: str = "forward"
    noise: float = 0.0
    slope: float = 0.01
    loss: str = "reconstruction"
    kind: str = "learned"
    reg: float = ANALYTIC_REG
    clip: float = ANALYTIC_CLIP
    context: str | None = None
    context_size: int | None = None

    @property
    def impl(self):
        """The :class:`~tpgraph.inverses.InverseKind` object of ``kind`` (what it needs, how it proposes)."""
        return get_inverse_kind(self.kind, f"inverse with respect to {self.of!r}")

    @property
    def loss_impl(self):
        """The :class:`~tpgraph.inverse_losses.InverseLoss` object of ``loss`` (what trains ``g``)."""
        return get_inverse_loss(self.loss, f"inverse with respect to {self.of!r}")

    def __repr__(self):
        if not self.impl.has_params:
            return (f"Inverse(of={self.of!r}, kind={self.kind!r}, reg={self.reg}, clip={self.clip}, "
                    f"others={self.others!r})")
        extra = "" if self.loss == "reconstruction" else f", loss={self.loss!r}"
        if self.context is not None:
            extra += f", context={self.context!r}"
        return (
            f"Inverse(of={self.of!r}, weight={self.weight!r}, bias={self.bias!r}, "
            f"act={self.act!r}, others={self.others!r}, noise={self.noise}{extra})"
        )


@dataclass(repr=False)
class Node:
    """Base class of all node kinds."""

    name: str
    inputs: tuple = ()
    rules: tuple = ()

    kind = "node"
    has_params = False
    is_data = False
    is_loss = False

    def __post_init__(self):
        _check_name(self.name, "node name")
        if isinstance(self.inputs, str):
            self.inputs = (self.inputs,)
        try:
            self.inputs = tuple(self.inputs)
        except TypeError:
            raise GraphError(f"node {self.name!r}: inputs must be a list of node names, got {self.inputs!r}") from None
        for u in self.inputs:
            _check_name(u, f"node {self.name!r}: input name")
        if len(set(self.inputs)) != len(self.inputs):
            raise GraphError(f"node {self.name!r} lists the same input twice: {self.inputs}")
        if isinstance(self.rules, str):
            self.rules = (self.rules,) * len(self.inputs)
        self.rules = tuple(self.rules) if self.rules else self.default_rules()
        if len(self.rules) != len(self.inputs):
            raise GraphError(
                f"node {self.name!r}: {len(self.rules)} credit rules for {len(self.inputs)} inputs"
            )
        for u, r in zip(self.inputs, self.rules):
            get_rule(r, f"edge {u!r} -> {self.name!r}")

    def default_rules(self):
        return ("gradient",) * len(self.inputs)

    def settings(self) -> dict:
        """The node's own settings (beyond name, inputs and rules), for display and stacking."""
        return {}

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v in self.settings().items())
        ins = ", ".join(f"{u}:{r}" for u, r in zip(self.inputs, self.rules))
        return f"{type(self).__name__}({self.name!r}, inputs=[{ins}]{extra})"


@dataclass(repr=False)
class Input(Node):
    """Batched real-valued data ``[B, size]``: no parameters, no targets."""

    size: int = 1
    kind = "input"
    is_data = True

    def __post_init__(self):
        super().__post_init__()
        if self.inputs:
            raise GraphError(f"data input {self.name!r} cannot have inputs")
        _check_size(self.size, self.name)

    def settings(self):
        return {"size": self.size}


@dataclass(repr=False)
class IndexInput(Node):
    """Batched integer data ``[B]`` in ``0..num_classes-1``.

    Fed to a dense node it acts as a one-hot vector of width ``num_classes``
    (computed as a gather, never materialised); fed to a cross-entropy loss it
    is the labels.
    """

    num_classes: int = 2
    kind = "index_input"
    is_data = True

    def __post_init__(self):
        super().__post_init__()
        if self.inputs:
            raise GraphError(f"data input {self.name!r} cannot have inputs")
        _check_size(self.num_classes, self.name)

    @property
    def size(self):
        return self.num_classes

    def settings(self):
        return {"num_classes": self.num_classes}


@dataclass(repr=False)
class Dense(Node):
    """``h = act(sum_i W_i h_i + b)`` with any number of inputs.

    ``weights`` names one parameter group per input (shape ``[size, size_i]``),
    ``bias`` a group of shape ``[size]`` or None. ``inverses`` maps an input
    name to the :class:`Inverse` used by ``dtp``/``tp`` edges from that input.
    ``merge`` overrides the graph's merge strategy for this node's target.
    """

    size: int = 1
    act: str = "tanh"
    weights: tuple = ()
    bias: str | None = None
    slope: float = 0.01
    inverses: dict = field(default_factory=dict)
    merge: str | None = None
    kind = "dense"
    has_params = True

    def __post_init__(self):
        super().__post_init__()
        _check_size(self.size, self.name)
        _check_act(self.act, self.name)
        _check_number(self.slope, self.name, "slope (of leaky_relu)")
        if isinstance(self.weights, str):
            self.weights = (self.weights,)
        self.weights = tuple(self.weights)
        if len(self.weights) != len(self.inputs):
            raise GraphError(
                f"node {self.name!r}: {len(self.weights)} weight groups for {len(self.inputs)} inputs "
                f"{self.inputs}; name one parameter group per input"
            )
        for w in self.weights:
            _check_name(w, f"node {self.name!r}: weight group name")
        if self.bias is not None:
            _check_name(self.bias, f"node {self.name!r}: bias group name")
        if not self.inputs:
            raise GraphError(f"dense node {self.name!r} needs at least one input")

    def settings(self):
        s = {"size": self.size, "act": self.act, "weights": self.weights, "bias": self.bias}
        if self.inverses:
            # keyed by input slot, so that the nodes of an unrolled chain compare equal
            s["inverses"] = {
                self.inputs.index(of): (inv.weight, inv.bias, inv.act, inv.others, inv.noise, inv.slope)
                + ((inv.loss,) if inv.loss != "reconstruction" else ())
                + ((inv.kind, inv.reg, inv.clip) if inv.kind != "learned" else ())
                + (("context", inv.context, inv.context_size) if inv.context is not None else ())
                for of, inv in sorted(self.inverses.items(), key=lambda kv: self.inputs.index(kv[0]))
                if of in self.inputs
            }
        if self.merge:
            s["merge"] = self.merge
        return s


@dataclass(repr=False)
class SoftmaxOutput(Dense):
    """A linear layer whose value is the logits ``z = sum_i W_i h_i + b``.

    Its probabilities are ``softmax(z)``; a cross-entropy loss takes the
    logits so that gradients stay stable. Local updates and credit act on the
    logits.
    """

    act: str = "identity"
    kind = "softmax_output"

    def __post_init__(self):
        if self.act != "identity":
            raise GraphError(f"softmax output {self.name!r}: act is fixed to 'identity' (logits)")
        super().__post_init__()


@dataclass(repr=False)
class Add(Node):
    """Elementwise sum of inputs of equal size; no parameters."""

    merge: str | None = None
    size: int = 0  # set from the inputs when the graph is validated
    kind = "add"

    def settings(self):
        return {"merge": self.merge} if self.merge else {}

    def __post_init__(self):
        super().__post_init__()
        if len(self.inputs) < 1:
            raise GraphError(f"add node {self.name!r} needs at least one input")


@dataclass(repr=False)
class Elementwise(Node):
    """Base of the parameter-free elementwise kinds (:class:`Multiply`, :class:`Activation`, :class:`Scale`).

    A node of these kinds is as wide as its inputs (all of one width) and has
    no parameters, so it needs a target only to pass credit on. Its local
    Jacobian is diagonal: ``gradient`` edges propose ``h_u + J_u^T D`` with a
    hand-written elementwise product. ``dtp``/``tp`` edges need an inverse;
    these kinds have no learned inverse, only an exact one where the function
    is invertible (:meth:`has_inverse`), and the graph refuses the edge
    otherwise. ``merge`` overrides the graph's merge strategy for the node.
    """

    merge: str | None = None
    size: int = 0  # set from the inputs when the graph is validated
    #: The fewest and the most inputs the kind takes (None: any number).
    min_inputs = 1
    max_inputs = 1

    def __post_init__(self):
        super().__post_init__()
        k = len(self.inputs)
        if k < self.min_inputs or (self.max_inputs is not None and k > self.max_inputs):
            want = (f"exactly {self.min_inputs}" if self.min_inputs == self.max_inputs
                    else f"at least {self.min_inputs}")
            raise GraphError(f"{self.kind} node {self.name!r} needs {want} input(s), got {list(self.inputs)}")

    def has_inverse(self) -> bool:
        """Whether the kind's function has an exact inverse (so that ``dtp``/``tp`` edges may ask for it)."""
        return False

    def no_inverse_reason(self) -> str:
        """Why there is no inverse, in words, for error messages."""
        return "no inverse"

    def settings(self):
        return {"merge": self.merge} if self.merge else {}


@dataclass(repr=False)
class Multiply(Elementwise):
    """Elementwise product ``h = x_0 * x_1 * ... * x_{k-1}`` of two or more inputs of equal size.

    Its local Jacobian-vector product for input ``i`` is the product of the
    other inputs times the displacement: ``P_i = D * prod_{j != i} x_j``. It
    has no inverse in general (recovering one factor divides by the others,
    which may be 0), so its edges take ``gradient`` or ``none``.
    """

    kind = "multiply"
    min_inputs = 2
    max_inputs = None

    def no_inverse_reason(self):
        return "no inverse (recovering one factor of a product divides by the others)"


@dataclass(repr=False)
class Activation(Elementwise):
    """A parameter-free activation ``h = act(x)`` of one input (``tanh``, ``sigmoid``, ``relu``, ...).

    Its local Jacobian-vector product is ``P = act'(x) * D`` (the derivative
    through the output, as for dense nodes). ``identity``, ``tanh``,
    ``sigmoid`` and ``leaky_relu`` (slope != 0) have exact inverses
    (``atanh``, ``logit``, ...; the output clipped to ``clip`` inside the
    open range of ``tanh`` and ``sigmoid``), which ``dtp`` edges use:
    ``tau = h_u + g(h_hat) - g(h)``; ``tp``: ``tau = g(h_hat)``. ``relu``
    has none.
    """

    act: str = "tanh"
    slope: float = 0.01
    clip: float = 1e-6
    kind = "activation"

    def __post_init__(self):
        super().__post_init__()
        _check_act(self.act, self.name)
        _check_number(self.slope, self.name, "slope (of leaky_relu)")
        _check_number(self.clip, self.name, "clip (of the inverse of tanh and sigmoid)", positive=True)
        if self.clip >= 0.5:
            raise GraphError(f"node {self.name!r}: clip must be below 0.5, got {self.clip!r}")

    def has_inverse(self):
        return self.act in ("identity", "tanh", "sigmoid") or (self.act == "leaky_relu" and self.slope != 0)

    def no_inverse_reason(self):
        if self.act == "leaky_relu":
            return "no inverse (a leaky_relu of slope 0 maps every negative input to 0)"
        return f"no inverse (act {self.act!r} is not one-to-one)"

    def settings(self):
        s = {"act": self.act, "slope": self.slope, "clip": self.clip}
        s.update(super().settings())
        return s


@dataclass(repr=False)
class Scale(Elementwise):
    """``h = factor * x``: one input times a fixed, non-zero number (e.g. ``-1`` for a difference).

    Its local Jacobian-vector product is ``P = factor * D`` and its exact
    inverse ``x = h / factor``, so ``dtp`` and ``tp`` edges are allowed.
    """

    factor: float = 1.0
    kind = "scale"

    def __post_init__(self):
        super().__post_init__()
        _check_number(self.factor, self.name, "factor")
        if self.factor == 0:
            raise GraphError(f"scale node {self.name!r}: factor must not be 0 (it would carry no credit)")
        self.factor = float(self.factor)

    def has_inverse(self):
        return True

    def settings(self):
        s = {"factor": self.factor}
        s.update(super().settings())
        return s


@dataclass(repr=False)
class Loss(Node):
    """Base of losses: input 0 is the prediction, input 1 what it is compared against.

    A loss proposes the target ``h - alpha * dL/dh`` for its prediction
    (``alpha`` from the engine, or ``alpha`` here to override it).
    """

    reduction: str = "mean"
    alpha: float | None = None
    is_loss = True
    size = 1  # a loss's value is one number per sample

    def default_rules(self):
        return ("gradient", "none")[: len(self.inputs)]

    def __post_init__(self):
        super().__post_init__()
        if len(self.inputs) != 2:
            raise GraphError(
                f"loss {self.name!r} has nothing to compare against: it needs exactly two inputs "
                f"(prediction, labels/target), got {list(self.inputs)}"
            )
        if self.reduction not in REDUCTIONS:
            raise GraphError(
                f"loss {self.name!r}: unknown reduction {self.reduction!r}; known: {', '.join(REDUCTIONS)}"
            )
        if self.alpha is not None:
            _check_number(self.alpha, self.name, "alpha (the loss's target step)", positive=True)
        if get_rule(self.rules[1]).carries_credit:
            raise GraphError(f"loss {self.name!r}: the edge from {self.inputs[1]!r} (labels/target) must have rule 'none'")
        pred = get_rule(self.rules[0])
        if not pred.carries_credit:
            raise GraphError(f"loss {self.name!r}: the edge from its prediction {self.inputs[0]!r} cannot have rule 'none'")
        if not pred.for_losses:
            raise GraphError(f"loss {self.name!r}: the edge from its prediction {self.inputs[0]!r} has rule "
                             f"{self.rules[0]!r}, which needs {pred.requirement()}; a loss has none and always "
                             f"proposes h - alpha dL/dh: use rule 'gradient'")

    def settings(self):
        s = {"reduction": self.reduction}
        if self.alpha is not None:
            s["alpha"] = self.alpha
        return s


@dataclass(repr=False)
class CrossEntropy(Loss):
    """Cross-entropy of ``softmax(logits)`` against integer labels (an :class:`IndexInput`)."""

    kind = "cross_entropy"


@dataclass(repr=False)
class MSE(Loss):
    """``1/2 ||h - t||^2`` per sample against a real-valued target node."""

    kind = "mse"


#: Node kinds by name, for declarations read from networkx attributes.
KINDS = {
    cls.kind: cls
    for cls in (Input, IndexInput, Dense, SoftmaxOutput, Add, Multiply, Activation, Scale, CrossEntropy, MSE)
}
